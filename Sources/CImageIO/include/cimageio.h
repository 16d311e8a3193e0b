#ifndef CIMAGEIO_H
#define CIMAGEIO_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * setjmp-safe PNG/JPEG encoding and decoding, entirely in memory.
 *
 * Swift cannot call setjmp, and libpng/libjpeg report errors by longjmp (or by
 * exit() by default), so every library call happens here, behind a setjmp that
 * never crosses a Swift frame. Files are read and written by the Swift side
 * (atomically), so nothing here touches the file system.
 *
 * Conventions for every function:
 *   - returns 0 on success, non-zero on failure;
 *   - on failure errbuf (if non-NULL) receives a NUL-terminated message and all
 *     output pointers are left NULL / 0;
 *   - output buffers are malloc'd; release them with cimg_free.
 * Pixels are RGB8 interleaved, row-major, stride = width * 3.
 *
 * Text blobs ("packed text") are `count` pairs laid out as
 *   key '\0' value '\0' key '\0' value '\0' ...
 */

/* PNG encode. `text` is a packed text blob of `text_count` pairs, `text_len`
   bytes long. Keys are Latin-1 PNG keywords. utf8[i] == 0: value i is Latin-1
   and goes into a tEXt chunk; utf8[i] != 0: value i is UTF-8 and goes into an
   uncompressed iTXt chunk. Text chunks are written before the image data. */
int cimg_png_encode(const uint8_t *rgb, int width, int height,
                    const uint8_t *text, size_t text_len, const int *utf8, int text_count,
                    uint8_t **out_buf, size_t *out_len, char *errbuf, size_t errlen);

/* PNG decode to RGB8 (palette, gray, 16-bit and interlaced inputs are
   converted; alpha is dropped, not composited). All tEXt/zTXt/iTXt chunks,
   before and after the image data, come back as a packed text blob with keys
   and values converted to UTF-8 (tEXt/zTXt are Latin-1 in the file). */
int cimg_png_decode(const uint8_t *buf, size_t len,
                    uint8_t **out_rgb, int *out_w, int *out_h,
                    uint8_t **out_text, size_t *out_text_len, int *out_text_count,
                    char *errbuf, size_t errlen);

/* JPEG encode, quality 1...100. If comment_len > 0 the bytes are written in a
   COM marker (at most 65533 bytes). */
int cimg_jpeg_encode(const uint8_t *rgb, int width, int height, int quality,
                     const uint8_t *comment, size_t comment_len,
                     uint8_t **out_buf, size_t *out_len, char *errbuf, size_t errlen);

/* JPEG decode to RGB8. The first COM marker, if any, comes back in
   *out_comment (NUL-terminated, length without the NUL in *out_comment_len).
   Warnings about corrupt data (e.g. a truncated file) are treated as errors:
   libjpeg would otherwise return a silently damaged image. */
int cimg_jpeg_decode(const uint8_t *buf, size_t len,
                     uint8_t **out_rgb, int *out_w, int *out_h,
                     uint8_t **out_comment, size_t *out_comment_len,
                     char *errbuf, size_t errlen);

void cimg_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
