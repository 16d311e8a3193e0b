#ifndef CJPEG_SHIM_H
#define CJPEG_SHIM_H
/* jpeglib.h needs FILE and size_t first. */
#include <stddef.h>
#include <stdio.h>
#include <jpeglib.h>
#endif
