/* GGUF block formats (Q8_0, Q4_0, Q5_0, Q2_K..Q6_K): not native yet, so they run on the PyTorch path. */
#include "dsv4k.h"

const dsv4k_format *dsv4k_gguf_format(int fmt) {
    (void)fmt;
    return NULL;
}
