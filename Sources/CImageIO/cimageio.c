/*
 * setjmp-safe libpng / libjpeg wrappers (see include/cimageio.h).
 *
 * Pattern used throughout: a public function owns every resource (library
 * structs, output buffers) and calls a small "body" function that does the
 * setjmp and the library calls. A library error longjmps back into the body,
 * which returns 1; the owner then frees whatever was allocated. Keeping the
 * setjmp in its own function means no local variable of the setjmp frame is
 * read after a longjmp, which is what C leaves undefined.
 */
#include "cimageio.h"
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

/* Refuse images above 2^28 pixels (768 MiB of RGB8): a corrupt or hostile
   header must not make us allocate gigabytes. */
#define CIMG_MAX_PIXELS ((size_t)1 << 28)

static void set_err(char *errbuf, size_t errlen, const char *msg) {
    if (errbuf && errlen) {
        strncpy(errbuf, msg, errlen - 1);
        errbuf[errlen - 1] = 0;
    }
}

void cimg_free(void *p) { free(p); }

/* ---------------- growable byte buffer ---------------- */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} cimg_buf;

static int buf_append(cimg_buf *b, const void *p, size_t n) {
    if (n > SIZE_MAX / 2 - b->len) return 0;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *d = (uint8_t *)realloc(b->data, cap);
        if (!d) return 0;
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return 1;
}

/* PNG tEXt/zTXt text and all PNG keywords are Latin-1; we hand UTF-8 to Swift. */
static int buf_append_latin1_as_utf8(cimg_buf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c < 0x80) {
            if (!buf_append(b, &c, 1)) return 0;
        } else {
            uint8_t two[2] = {(uint8_t)(0xC0 | (c >> 6)), (uint8_t)(0x80 | (c & 0x3F))};
            if (!buf_append(b, two, 2)) return 0;
        }
    }
    return 1;
}

static const uint8_t zero_byte = 0;

/* ---------------- libpng ---------------- */

typedef struct {
    char *errbuf;
    size_t errlen;
} png_errctx;

static void png_error_fn(png_structp png, png_const_charp msg) {
    png_errctx *ctx = (png_errctx *)png_get_error_ptr(png);
    if (ctx) set_err(ctx->errbuf, ctx->errlen, msg);
    png_longjmp(png, 1);
}

/* Warnings (e.g. a bad ancillary chunk CRC, which libpng then skips) are not
   worth failing for and must not go to stderr. */
static void png_warning_fn(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void png_write_to_buf(png_structp png, png_bytep data, size_t n) {
    if (!buf_append((cimg_buf *)png_get_io_ptr(png), data, n)) png_error(png, "out of memory");
}

static void png_flush_noop(png_structp png) { (void)png; }

static int png_encode_body(png_structp png, png_infop info, const uint8_t *rgb, int width, int height,
                           png_textp texts, int text_count, cimg_buf *out) {
    if (setjmp(png_jmpbuf(png))) return 1;
    png_set_write_fn(png, out, png_write_to_buf, png_flush_noop);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (text_count > 0) png_set_text(png, info, texts, text_count);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)width * 3));
    png_write_end(png, NULL);
    return 0;
}

int cimg_png_encode(const uint8_t *rgb, int width, int height,
                    const uint8_t *text, size_t text_len, const int *utf8, int text_count,
                    uint8_t **out_buf, size_t *out_len, char *errbuf, size_t errlen) {
    *out_buf = NULL;
    *out_len = 0;
    if (!rgb || width <= 0 || height <= 0) {
        set_err(errbuf, errlen, "image must be at least 1x1 pixels");
        return 2;
    }
    if (text_count < 0 || (text_count > 0 && (!text || !utf8))) {
        set_err(errbuf, errlen, "invalid text chunk arguments");
        return 2;
    }

    /* Unpack the text blob into png_text entries that point into it. */
    png_textp texts = NULL;
    if (text_count > 0) {
        texts = (png_textp)calloc((size_t)text_count, sizeof *texts);
        if (!texts) {
            set_err(errbuf, errlen, "out of memory");
            return 3;
        }
        size_t pos = 0;
        for (int i = 0; i < text_count; i++) {
            const char *parts[2];
            for (int k = 0; k < 2; k++) {
                const uint8_t *nul = pos < text_len ? memchr(text + pos, 0, text_len - pos) : NULL;
                if (!nul) {
                    free(texts);
                    set_err(errbuf, errlen, "malformed text blob");
                    return 2;
                }
                parts[k] = (const char *)(text + pos);
                pos = (size_t)(nul - text) + 1;
            }
            texts[i].compression = utf8[i] ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE;
            texts[i].key = (png_charp)parts[0];
            texts[i].text = (png_charp)parts[1];
            texts[i].text_length = strlen(parts[1]);
        }
    }

    png_errctx ctx = {errbuf, errlen};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, png_error_fn, png_warning_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        free(texts);
        set_err(errbuf, errlen, "out of memory");
        return 3;
    }
    cimg_buf out = {NULL, 0, 0};
    int rc = png_encode_body(png, info, rgb, width, height, texts, text_count, &out);
    png_destroy_write_struct(&png, &info);
    free(texts);
    if (rc != 0) {
        free(out.data);
        return rc;
    }
    *out_buf = out.data;
    *out_len = out.len;
    return 0;
}

typedef struct {
    const uint8_t *data;
    size_t len, pos;
} mem_src;

static void png_read_from_mem(png_structp png, png_bytep dst, size_t n) {
    mem_src *s = (mem_src *)png_get_io_ptr(png);
    if (n > s->len - s->pos) png_error(png, "PNG data ends unexpectedly (truncated file)");
    memcpy(dst, s->data + s->pos, n);
    s->pos += n;
}

typedef struct {
    uint8_t *rgb;
    png_bytep *rows;
    int w, h;
    cimg_buf text;
    int text_count;
} png_decoded;

static int png_decode_body(png_structp png, png_infop info, mem_src *src, png_decoded *out) {
    if (setjmp(png_jmpbuf(png))) return 1;
    png_set_read_fn(png, src, png_read_from_mem);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if ((size_t)w * (size_t)h > CIMG_MAX_PIXELS) png_error(png, "image is too large");

    /* Normalise every PNG flavour to 8-bit RGB. */
    png_set_expand(png); /* palette -> RGB, gray < 8 bit -> 8 bit, tRNS -> alpha */
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != (size_t)w * 3)
        png_error(png, "unsupported PNG pixel layout");

    out->rgb = (uint8_t *)malloc((size_t)w * (size_t)h * 3);
    out->rows = (png_bytep *)malloc((size_t)h * sizeof(png_bytep));
    if (!out->rgb || !out->rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) out->rows[y] = out->rgb + (size_t)y * (size_t)w * 3;
    png_read_image(png, out->rows);
    png_read_end(png, info); /* passing info also collects text chunks after IDAT */

    png_textp texts = NULL;
    int n = 0;
    png_get_text(png, info, &texts, &n);
    for (int i = 0; i < n; i++) {
        int is_itxt = texts[i].compression == PNG_ITXT_COMPRESSION_NONE ||
                      texts[i].compression == PNG_ITXT_COMPRESSION_zTXt;
        const char *value = texts[i].text ? texts[i].text : "";
        size_t value_len = is_itxt ? texts[i].itxt_length : texts[i].text_length;
        if (value_len > strlen(value)) value_len = strlen(value);
        int ok = buf_append_latin1_as_utf8(&out->text, texts[i].key, strlen(texts[i].key)) &&
                 buf_append(&out->text, &zero_byte, 1) &&
                 (is_itxt ? buf_append(&out->text, value, value_len)
                          : buf_append_latin1_as_utf8(&out->text, value, value_len)) &&
                 buf_append(&out->text, &zero_byte, 1);
        if (!ok) png_error(png, "out of memory");
        out->text_count++;
    }
    out->w = (int)w;
    out->h = (int)h;
    return 0;
}

int cimg_png_decode(const uint8_t *buf, size_t len,
                    uint8_t **out_rgb, int *out_w, int *out_h,
                    uint8_t **out_text, size_t *out_text_len, int *out_text_count,
                    char *errbuf, size_t errlen) {
    *out_rgb = NULL;
    *out_w = *out_h = 0;
    *out_text = NULL;
    *out_text_len = 0;
    *out_text_count = 0;
    if (!buf || len < 8 || png_sig_cmp((png_const_bytep)buf, 0, 8) != 0) {
        set_err(errbuf, errlen, "not a PNG file (bad signature)");
        return 2;
    }
    png_errctx ctx = {errbuf, errlen};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_error_fn, png_warning_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, NULL);
        set_err(errbuf, errlen, "out of memory");
        return 3;
    }
    mem_src src = {buf, len, 0};
    png_decoded out;
    memset(&out, 0, sizeof out);
    int rc = png_decode_body(png, info, &src, &out);
    png_destroy_read_struct(&png, &info, NULL);
    free(out.rows);
    if (rc != 0) {
        free(out.rgb);
        free(out.text.data);
        return rc;
    }
    *out_rgb = out.rgb;
    *out_w = out.w;
    *out_h = out.h;
    *out_text = out.text.data;
    *out_text_len = out.text.len;
    *out_text_count = out.text_count;
    return 0;
}

/* ---------------- libjpeg ---------------- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int strict; /* decoding: treat corrupt-data warnings as errors */
} jpeg_err;

static void jpeg_error_exit_fn(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jb, 1);
}

/* Level -1 is a warning about damaged data (libjpeg fills the rest with gray
   and carries on); in strict mode we fail instead. Other messages are trace
   output that must not reach stderr. */
static void jpeg_emit_message_fn(j_common_ptr cinfo, int level) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    if (level < 0 && e->strict) jpeg_error_exit_fn(cinfo);
}

static void jpeg_output_message_fn(j_common_ptr cinfo) { (void)cinfo; }

static void jpeg_err_init(jpeg_err *e, int strict) {
    memset(e, 0, sizeof *e);
    jpeg_std_error(&e->pub);
    e->pub.error_exit = jpeg_error_exit_fn;
    e->pub.emit_message = jpeg_emit_message_fn;
    e->pub.output_message = jpeg_output_message_fn;
    e->strict = strict;
}

/* Our own destination manager: jpeg_mem_dest reallocates internally and only
   publishes the final pointer at the end, so after an error its buffer would
   be unreachable (leak) or stale (double free). */
typedef struct {
    struct jpeg_destination_mgr pub;
    cimg_buf *out;
    JOCTET chunk[16384];
} jpeg_dest;

static void jpeg_dest_init(j_compress_ptr c) {
    jpeg_dest *d = (jpeg_dest *)c->dest;
    d->pub.next_output_byte = d->chunk;
    d->pub.free_in_buffer = sizeof d->chunk;
}

static boolean jpeg_dest_empty(j_compress_ptr c) {
    jpeg_dest *d = (jpeg_dest *)c->dest;
    /* libjpeg's contract: the whole chunk is full here, whatever free_in_buffer says. */
    if (!buf_append(d->out, d->chunk, sizeof d->chunk)) ERREXIT1(c, JERR_OUT_OF_MEMORY, 1);
    d->pub.next_output_byte = d->chunk;
    d->pub.free_in_buffer = sizeof d->chunk;
    return TRUE;
}

static void jpeg_dest_term(j_compress_ptr c) {
    jpeg_dest *d = (jpeg_dest *)c->dest;
    if (!buf_append(d->out, d->chunk, sizeof d->chunk - d->pub.free_in_buffer))
        ERREXIT1(c, JERR_OUT_OF_MEMORY, 2);
}

static int jpeg_encode_body(struct jpeg_compress_struct *c, jpeg_err *err, jpeg_dest *dest,
                            const uint8_t *rgb, int width, int height, int quality,
                            const uint8_t *comment, size_t comment_len) {
    if (setjmp(err->jb)) return 1;
    jpeg_create_compress(c);
    dest->pub.init_destination = jpeg_dest_init;
    dest->pub.empty_output_buffer = jpeg_dest_empty;
    dest->pub.term_destination = jpeg_dest_term;
    c->dest = &dest->pub;
    c->image_width = (JDIMENSION)width;
    c->image_height = (JDIMENSION)height;
    c->input_components = 3;
    c->in_color_space = JCS_RGB;
    jpeg_set_defaults(c);
    jpeg_set_quality(c, quality, TRUE);
    c->optimize_coding = TRUE; /* smaller file, same pixels */
    if (quality >= 90) {
        /* At high quality the default 4:2:0 chroma subsampling is the largest
           remaining error (colour fringes on sharp edges): keep full chroma. */
        c->comp_info[0].h_samp_factor = 1;
        c->comp_info[0].v_samp_factor = 1;
    }
    jpeg_start_compress(c, TRUE);
    if (comment_len > 0) jpeg_write_marker(c, JPEG_COM, (const JOCTET *)comment, (unsigned int)comment_len);
    while (c->next_scanline < c->image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c->next_scanline * (size_t)width * 3);
        jpeg_write_scanlines(c, &row, 1);
    }
    jpeg_finish_compress(c);
    return 0;
}

int cimg_jpeg_encode(const uint8_t *rgb, int width, int height, int quality,
                     const uint8_t *comment, size_t comment_len,
                     uint8_t **out_buf, size_t *out_len, char *errbuf, size_t errlen) {
    *out_buf = NULL;
    *out_len = 0;
    if (!rgb || width <= 0 || height <= 0) {
        set_err(errbuf, errlen, "image must be at least 1x1 pixels");
        return 2;
    }
    if (quality < 1 || quality > 100) {
        set_err(errbuf, errlen, "JPEG quality must be between 1 and 100");
        return 2;
    }
    if (comment_len > 65533 || (comment_len > 0 && !comment)) {
        set_err(errbuf, errlen, "JPEG comment must be at most 65533 bytes");
        return 2;
    }
    struct jpeg_compress_struct c;
    memset(&c, 0, sizeof c);
    jpeg_err err;
    jpeg_err_init(&err, 0);
    c.err = &err.pub;
    cimg_buf out = {NULL, 0, 0};
    jpeg_dest *dest = (jpeg_dest *)calloc(1, sizeof *dest);
    if (!dest) {
        set_err(errbuf, errlen, "out of memory");
        return 3;
    }
    dest->out = &out;
    int rc = jpeg_encode_body(&c, &err, dest, rgb, width, height, quality, comment, comment_len);
    jpeg_destroy_compress(&c);
    free(dest);
    if (rc != 0) {
        set_err(errbuf, errlen, err.msg);
        free(out.data);
        return rc;
    }
    *out_buf = out.data;
    *out_len = out.len;
    return 0;
}

typedef struct {
    uint8_t *rgb;
    int w, h;
    uint8_t *comment;
    size_t comment_len;
} jpeg_decoded;

/* Fail with our own message, through the same longjmp path as libjpeg errors. */
static void jpeg_fail(jpeg_err *err, const char *msg) {
    set_err(err->msg, sizeof err->msg, msg);
    longjmp(err->jb, 1);
}

static int jpeg_decode_body(struct jpeg_decompress_struct *d, jpeg_err *err,
                            const uint8_t *buf, size_t len, jpeg_decoded *out) {
    if (setjmp(err->jb)) return 1;
    jpeg_create_decompress(d);
    jpeg_mem_src(d, (const unsigned char *)buf, (unsigned long)len);
    jpeg_save_markers(d, JPEG_COM, 0xFFFF);
    jpeg_read_header(d, TRUE);

    /* Saved markers live in the image pool, which jpeg_finish_decompress frees: copy now. */
    for (jpeg_saved_marker_ptr m = d->marker_list; m; m = m->next) {
        if (m->marker != JPEG_COM) continue;
        out->comment = (uint8_t *)malloc((size_t)m->data_length + 1);
        if (!out->comment) jpeg_fail(err, "out of memory");
        memcpy(out->comment, m->data, m->data_length);
        out->comment[m->data_length] = 0;
        out->comment_len = m->data_length;
        break;
    }

    if ((size_t)d->image_width * (size_t)d->image_height > CIMG_MAX_PIXELS) jpeg_fail(err, "image is too large");
    d->out_color_space = JCS_RGB; /* gray and YCbCr convert; CMYK fails with a clear libjpeg message */
    jpeg_start_decompress(d);
    if (d->output_components != 3) jpeg_fail(err, "unsupported JPEG colour layout");
    size_t stride = (size_t)d->output_width * 3;
    out->rgb = (uint8_t *)malloc(stride * (size_t)d->output_height);
    if (!out->rgb) jpeg_fail(err, "out of memory");
    while (d->output_scanline < d->output_height) {
        JSAMPROW row = (JSAMPROW)(out->rgb + (size_t)d->output_scanline * stride);
        jpeg_read_scanlines(d, &row, 1);
    }
    out->w = (int)d->output_width;
    out->h = (int)d->output_height;
    jpeg_finish_decompress(d);
    return 0;
}

int cimg_jpeg_decode(const uint8_t *buf, size_t len,
                     uint8_t **out_rgb, int *out_w, int *out_h,
                     uint8_t **out_comment, size_t *out_comment_len,
                     char *errbuf, size_t errlen) {
    *out_rgb = NULL;
    *out_w = *out_h = 0;
    *out_comment = NULL;
    *out_comment_len = 0;
    if (!buf || len == 0) {
        set_err(errbuf, errlen, "empty JPEG data");
        return 2;
    }
    struct jpeg_decompress_struct d;
    memset(&d, 0, sizeof d);
    jpeg_err err;
    jpeg_err_init(&err, 1);
    d.err = &err.pub;
    jpeg_decoded out;
    memset(&out, 0, sizeof out);
    int rc = jpeg_decode_body(&d, &err, buf, len, &out);
    jpeg_destroy_decompress(&d);
    if (rc != 0) {
        set_err(errbuf, errlen, err.msg);
        free(out.rgb);
        free(out.comment);
        return rc;
    }
    *out_rgb = out.rgb;
    *out_w = out.w;
    *out_h = out.h;
    *out_comment = out.comment;
    *out_comment_len = out.comment_len;
    return 0;
}
