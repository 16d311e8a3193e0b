#ifndef CIMAGEIO_H
#define CIMAGEIO_H
#include <stddef.h>
#include <stdint.h>
/* placeholder: filled in by the image I/O work */
int cimg_version(void);
#endif
