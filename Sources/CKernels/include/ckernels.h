#ifndef CKERNELS_H
#define CKERNELS_H
#include <stddef.h>
int ck_has_avx2_fma(void);
#endif
