#include "cimageio.h"
int cimg_version(void) { return 1; }
