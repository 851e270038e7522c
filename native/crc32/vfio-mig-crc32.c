// vfio-mig-crc32: crc32 (the zlib/IEEE polynomial, reflected) with carry-less multiplication.
//
// crc32(data, crc): the crc32 of `data` (any Uint8Array, SharedArrayBuffer-backed included)
// continuing from `crc` (0 to start), exactly what zlib's crc32() returns.
// accelerated(): whether this CPU has PCLMULQDQ; without it crc32() is a byte-table loop and the
// caller keeps zlib's (src/streams/crc32.ts). With VPCLMULQDQ and AVX2 as well, it folds two
// lanes per instruction.
//
// Why: every record's payload is checksummed once on each side of a migration. The zlib bundled
// with Node 20 computes it at ~5 GB/s here (its carry-less path is not enabled), which is a fifth of a
// core at the data path's 1 GB/s; folding 64 bytes per step with PCLMULQDQ runs several times faster.
// docs/PERFORMANCE.md has the measurements.
//
// The method is the folding reduction of Gopal et al., "Fast CRC Computation for Generic
// Polynomials Using PCLMULQDQ Instruction" (Intel, 2009): four 128-bit lanes are folded forward by
// 512 bits per step (multiplying by x^(512±32) mod P), then into one lane (x^(128±32) mod P), then
// by 128 bits per 16 input bytes. Instead of a Barrett reduction, the final 16-byte lane is fed
// through the byte table like message bytes, followed by the tail: folding keeps the remainder, so
// the result is the same. The fold constants are computed at load time from the polynomial.
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "../napi-min.h"

#define POLY 0xedb88320u /* reflected x^32 + x^26 + ... + 1 */

static uint32_t table[256];
static uint64_t k1024lo, k1024hi, k512lo, k512hi, k256lo, k256hi, k128lo, k128hi;
static int have_pclmul, have_vpclmul;

/** One byte-table step per byte, on the bare register (no pre- or post-conditioning). */
static uint32_t bytes_crc(uint32_t r, const uint8_t *p, size_t n) {
  while (n--) r = table[(r ^ *p++) & 0xff] ^ (r >> 8);
  return r;
}

/**
 * x^n mod P in the reflected representation, shifted left by one (the form the folding products
 * need: a 33-bit reflected constant, as the Intel paper's k values are).
 */
static uint64_t xpow_mod(uint32_t n) {
  // In reflected form, x^0 is bit 31 and multiplying by x is a right shift with reduction.
  uint32_t r = 0x80000000u;
  while (n--) r = (r & 1) ? (r >> 1) ^ POLY : r >> 1;
  return (uint64_t)r << 1;
}

__attribute__((target("pclmul,sse4.1"))) static inline __m128i fold(__m128i x, __m128i k, __m128i next) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

/**
 * Fold the `n` bytes left (fewer than a block of the caller's loop) into lane `x` 16 at a time, then
 * finish through the byte table: the lane as message bytes from a zero register, then the tail.
 */
__attribute__((target("pclmul,sse4.1"))) static uint32_t finish(__m128i x, const uint8_t *p, size_t n) {
  const __m128i k1 = _mm_set_epi64x((long long)k128hi, (long long)k128lo);
  while (n >= 16) {
    x = fold(x, k1, _mm_loadu_si128((const __m128i *)p));
    p += 16;
    n -= 16;
  }
  uint8_t lane[16];
  _mm_storeu_si128((__m128i *)lane, x);
  return bytes_crc(bytes_crc(0, lane, 16), p, n);
}

/** The register after `n` bytes (n >= 64), starting from register `r`. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t pclmul_crc(uint32_t r, const uint8_t *p, size_t n) {
  __m128i x0 = _mm_loadu_si128((const __m128i *)(p + 0));
  __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
  __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
  __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
  x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)r));
  p += 64;
  n -= 64;
  const __m128i k4 = _mm_set_epi64x((long long)k512hi, (long long)k512lo);
  while (n >= 64) {
    x0 = fold(x0, k4, _mm_loadu_si128((const __m128i *)(p + 0)));
    x1 = fold(x1, k4, _mm_loadu_si128((const __m128i *)(p + 16)));
    x2 = fold(x2, k4, _mm_loadu_si128((const __m128i *)(p + 32)));
    x3 = fold(x3, k4, _mm_loadu_si128((const __m128i *)(p + 48)));
    p += 64;
    n -= 64;
  }
  const __m128i k1 = _mm_set_epi64x((long long)k128hi, (long long)k128lo);
  __m128i x = fold(x0, k1, x1);
  x = fold(x, k1, x2);
  x = fold(x, k1, x3);
  return finish(x, p, n);
}

__attribute__((target("vpclmulqdq,avx2,pclmul,sse4.1"))) static inline __m256i fold2(__m256i x, __m256i k, __m256i next) {
  return _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x, k, 0x00), _mm256_clmulepi64_epi128(x, k, 0x11)), next);
}

/**
 * The same folding, two lanes per instruction (VPCLMULQDQ on 256-bit registers): four registers
 * of two lanes move forward by 1024 bits per 128 input bytes, then fold into one register (256
 * bits apart), whose two lanes fold into one (128 bits apart). n >= 256.
 */
__attribute__((target("vpclmulqdq,avx2,pclmul,sse4.1"))) static uint32_t vpclmul_crc(uint32_t r, const uint8_t *p, size_t n) {
  __m256i y0 = _mm256_loadu_si256((const __m256i *)(p + 0));
  __m256i y1 = _mm256_loadu_si256((const __m256i *)(p + 32));
  __m256i y2 = _mm256_loadu_si256((const __m256i *)(p + 64));
  __m256i y3 = _mm256_loadu_si256((const __m256i *)(p + 96));
  y0 = _mm256_xor_si256(y0, _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, (int)r));
  p += 128;
  n -= 128;
  const __m256i k8 = _mm256_set_epi64x((long long)k1024hi, (long long)k1024lo, (long long)k1024hi, (long long)k1024lo);
  while (n >= 128) {
    y0 = fold2(y0, k8, _mm256_loadu_si256((const __m256i *)(p + 0)));
    y1 = fold2(y1, k8, _mm256_loadu_si256((const __m256i *)(p + 32)));
    y2 = fold2(y2, k8, _mm256_loadu_si256((const __m256i *)(p + 64)));
    y3 = fold2(y3, k8, _mm256_loadu_si256((const __m256i *)(p + 96)));
    p += 128;
    n -= 128;
  }
  const __m256i k2 = _mm256_set_epi64x((long long)k256hi, (long long)k256lo, (long long)k256hi, (long long)k256lo);
  __m256i y = fold2(y0, k2, y1);
  y = fold2(y, k2, y2);
  y = fold2(y, k2, y3);
  while (n >= 32) {
    y = fold2(y, k2, _mm256_loadu_si256((const __m256i *)p));
    p += 32;
    n -= 32;
  }
  const __m128i k1 = _mm_set_epi64x((long long)k128hi, (long long)k128lo);
  return finish(fold(_mm256_castsi256_si128(y), k1, _mm256_extracti128_si256(y, 1)), p, n);
}

static uint32_t crc32_of(uint32_t crc, const uint8_t *p, size_t n) {
  uint32_t r = ~crc;
  if (have_vpclmul && n >= 256) r = vpclmul_crc(r, p, n);
  else if (have_pclmul && n >= 64) r = pclmul_crc(r, p, n);
  else r = bytes_crc(r, p, n);
  return ~r;
}

static napi_value crc32_fn(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  uint32_t crc = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 1 ||
      napi_get_typedarray_info(env, argv[0], &type, &length, &data, NULL, NULL) != 0 || type != 1 /* uint8 */ ||
      (argc >= 2 && napi_get_value_uint32(env, argv[1], &crc) != 0)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "crc32(data, crc) takes a Uint8Array and an unsigned 32-bit integer");
    return NULL;
  }
  napi_value out = NULL;
  napi_create_uint32(env, crc32_of(crc, (const uint8_t *)data, length), &out);
  return out;
}

static napi_value accelerated_fn(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out = NULL;
  napi_get_boolean(env, have_pclmul, &out);
  return out;
}

VFIO_MIG_NAPI_MODULE_VERSION

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
    table[i] = c;
  }
  // Folding a lane forward by D bits multiplies its low half by x^(D+32) and its high half by
  // x^(D-32) (mod P), in the reflected, shifted form.
  k1024lo = xpow_mod(1024 + 32);
  k1024hi = xpow_mod(1024 - 32);
  k512lo = xpow_mod(512 + 32);
  k512hi = xpow_mod(512 - 32);
  k256lo = xpow_mod(256 + 32);
  k256hi = xpow_mod(256 - 32);
  k128lo = xpow_mod(128 + 32);
  k128hi = xpow_mod(128 - 32);
  __builtin_cpu_init();
  have_pclmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  have_vpclmul = have_pclmul && __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("avx2");
  if (vfio_mig_export(env, exports, "crc32", crc32_fn) != 0 || vfio_mig_export(env, exports, "accelerated", accelerated_fn) != 0) return NULL;
  return exports;
}
