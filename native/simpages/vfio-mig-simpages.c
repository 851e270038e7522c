// vfio-mig-simpages: SimDevice's page generator and checker, a run of pages per call.
//
// writePages(dst, pos, idx, ver, k, count, seed, kindMask, fixedKind, random, templates, text)
//   writes pages (idx[k + j], ver[k + j]) for j < count at dst[pos + 4096 j ...).
// verifyPages(src, pos, idx, ver, k, count, seed, kindMask, fixedKind, random, templates, text)
//   returns how many of those pages, from the first, are exactly what writePages would write.
//
// The page content is defined by src/devices/sim-pages.ts (PageGenerator.writePage/verifyPage):
// this file computes the same function, and the tests compare the two for every profile. What the
// addon saves is one JavaScript-to-C++ call and a bounds-checked store loop per 4 KiB page: on the
// benchmarks' 1 GiB moves that per-page work was the largest user-space item of both the source
// (memcpy and stamp) and the destination (Buffer.compare), and the reference device's cost is not
// what the data path's benchmarks mean to measure. docs/PERFORMANCE.md has the numbers.
#include <stdint.h>
#include <string.h>
#include "../napi-min.h"

#define PAGE_SIZE 4096u
#define STAMP_BYTES 16u
#define SALT_KIND 0x9e3779b9u

enum { KIND_ZERO = 0, KIND_TEMPLATE = 1, KIND_TEXT = 2, KIND_RANDOM = 3 };

static inline uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

static inline uint32_t page_hash(uint32_t seed, uint32_t index, uint32_t version, uint32_t salt) {
  return mix32(mix32(mix32(seed ^ salt) ^ index) + version);
}

struct pages {
  uint8_t *buf;
  size_t len;
  const uint32_t *idx;
  const uint32_t *ver;
  size_t idx_len, ver_len;
  uint32_t pos, k, count, seed;
  int32_t kind_mask, fixed_kind;
  const uint8_t *random, *templates, *text;
  /** Page counts of the pools less one (each count a power of two, as in sim-pages.ts): selector masks. */
  uint32_t random_mask, templates_mask, text_mask;
};

/** The pool page of kind hash `h`, or NULL for a zero page. */
static inline const uint8_t *source_page(const struct pages *p, uint32_t h) {
  uint32_t kind = p->kind_mask == 0 ? (uint32_t)p->fixed_kind : (h & 3u);
  uint32_t sel = h >> 2;
  switch (kind) {
    case KIND_TEMPLATE:
      return p->templates + (size_t)(sel & p->templates_mask) * PAGE_SIZE;
    case KIND_TEXT:
      return p->text + (size_t)(sel & p->text_mask) * PAGE_SIZE;
    case KIND_RANDOM:
      return p->random + (size_t)(sel & p->random_mask) * PAGE_SIZE;
    default:
      return NULL;
  }
}

static inline void put32(uint8_t *d, uint32_t v) {
  d[0] = (uint8_t)v;
  d[1] = (uint8_t)(v >> 8);
  d[2] = (uint8_t)(v >> 16);
  d[3] = (uint8_t)(v >> 24);
}

static inline void stamp(uint8_t *d, uint32_t index, uint32_t version, uint32_t seed, uint32_t h) {
  put32(d, index);
  put32(d + 4, version);
  put32(d + 8, seed);
  put32(d + 12, h);
}

/** Start loading the first lines of page j's pool source (if any) while the previous page is copied. */
static inline const uint8_t *prefetch_source(const struct pages *p, uint32_t j, uint32_t *h) {
  if (j >= p->count) return NULL;
  *h = page_hash(p->seed, p->idx[p->k + j], p->ver[p->k + j], SALT_KIND);
  const uint8_t *s = source_page(p, *h);
  if (s != NULL) {
    for (uint32_t line = 0; line < 512; line += 64) __builtin_prefetch(s + line);
  }
  return s;
}

static int is_zero(const uint8_t *d) {
  uint64_t acc = 0;
  for (uint32_t i = 0; i < PAGE_SIZE; i += 8) {
    uint64_t w;
    memcpy(&w, d + i, 8);
    acc |= w;
  }
  return acc == 0;
}

/** Page (index, version) with kind hash h and pool source s (NULL: a zero page) is at d. */
static int page_matches(const uint8_t *d, const uint8_t *s, uint32_t index, uint32_t version, uint32_t seed, uint32_t h) {
  if (s == NULL) return is_zero(d);
  uint8_t st[STAMP_BYTES];
  stamp(st, index, version, seed, h);
  return memcmp(d, st, STAMP_BYTES) == 0 && memcmp(d + STAMP_BYTES, s + STAMP_BYTES, PAGE_SIZE - STAMP_BYTES) == 0;
}

static void write_page(uint8_t *d, const uint8_t *s, uint32_t index, uint32_t version, uint32_t seed, uint32_t h) {
  if (s == NULL) {
    memset(d, 0, PAGE_SIZE);
    return;
  }
  memcpy(d + STAMP_BYTES, s + STAMP_BYTES, PAGE_SIZE - STAMP_BYTES);
  stamp(d, index, version, seed, h);
}

/**
 * Write the run's pages (verify 0) or check them (verify 1); returns how many pages, from the
 * first, were written or matched.
 */
static uint32_t run_pages(const struct pages *p, int verify) {
  uint8_t *d = p->buf + p->pos;
  uint32_t next_h = 0;
  const uint8_t *next = prefetch_source(p, 0, &next_h);
  for (uint32_t j = 0; j < p->count; j++, d += PAGE_SIZE) {
    uint32_t index = p->idx[p->k + j], version = p->ver[p->k + j];
    uint32_t h = next_h;
    const uint8_t *s = next;
    next = prefetch_source(p, j + 1, &next_h);
    if (!verify) write_page(d, s, index, version, p->seed, h);
    else if (!page_matches(d, s, index, version, p->seed, h)) return j;
  }
  return p->count;
}

static int bytes_of(napi_env env, napi_value v, int want_type, void **data, size_t *count) {
  napi_typedarray_type type;
  return napi_get_typedarray_info(env, v, &type, count, data, NULL, NULL) == 0 && type == want_type ? 0 : -1;
}

/** A pool's selector mask from its length (a power-of-two number of whole pages); 0 on success. */
static int pool_mask(size_t len, uint32_t *mask) {
  size_t pages = len / PAGE_SIZE;
  if (len % PAGE_SIZE != 0 || pages == 0 || pages > 0x80000000u || (pages & (pages - 1)) != 0) return -1;
  *mask = (uint32_t)(pages - 1);
  return 0;
}

#define UINT8 1
#define UINT32 6

/** Parse and bounds-check the twelve arguments; 0 on success (a TypeError/RangeError is thrown otherwise). */
static int parse(napi_env env, napi_callback_info info, struct pages *p, const char *name) {
  size_t argc = 12;
  napi_value a[12];
  void *buf, *idx, *ver, *random, *templates, *text;
  size_t random_len, templates_len, text_len;
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != 0 || argc < 12 || bytes_of(env, a[0], UINT8, &buf, &p->len) != 0 ||
      napi_get_value_uint32(env, a[1], &p->pos) != 0 || bytes_of(env, a[2], UINT32, &idx, &p->idx_len) != 0 ||
      bytes_of(env, a[3], UINT32, &ver, &p->ver_len) != 0 || napi_get_value_uint32(env, a[4], &p->k) != 0 ||
      napi_get_value_uint32(env, a[5], &p->count) != 0 || napi_get_value_uint32(env, a[6], &p->seed) != 0 ||
      napi_get_value_int32(env, a[7], &p->kind_mask) != 0 || napi_get_value_int32(env, a[8], &p->fixed_kind) != 0 ||
      bytes_of(env, a[9], UINT8, &random, &random_len) != 0 || bytes_of(env, a[10], UINT8, &templates, &templates_len) != 0 ||
      bytes_of(env, a[11], UINT8, &text, &text_len) != 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", name);
    return -1;
  }
  if ((uint64_t)p->pos + (uint64_t)p->count * PAGE_SIZE > p->len || (uint64_t)p->k + p->count > p->idx_len ||
      (uint64_t)p->k + p->count > p->ver_len || pool_mask(random_len, &p->random_mask) != 0 ||
      pool_mask(templates_len, &p->templates_mask) != 0 || pool_mask(text_len, &p->text_mask) != 0 ||
      (p->kind_mask != 0 && p->kind_mask != 3) || p->fixed_kind < 0 || p->fixed_kind > 3) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", name);
    return -1;
  }
  p->buf = buf;
  p->idx = idx;
  p->ver = ver;
  p->random = random;
  p->templates = templates;
  p->text = text;
  return 0;
}

static napi_value write_fn(napi_env env, napi_callback_info info) {
  struct pages p;
  if (parse(env, info, &p, "writePages(dst, pos, idx, ver, k, count, seed, kindMask, fixedKind, random, templates, text)") != 0) return NULL;
  run_pages(&p, 0);
  return NULL;
}

static napi_value verify_fn(napi_env env, napi_callback_info info) {
  struct pages p;
  if (parse(env, info, &p, "verifyPages(src, pos, idx, ver, k, count, seed, kindMask, fixedKind, random, templates, text)") != 0) return NULL;
  napi_value out = NULL;
  napi_create_uint32(env, run_pages(&p, 1), &out);
  return out;
}

VFIO_MIG_NAPI_MODULE_VERSION

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  if (vfio_mig_export(env, exports, "writePages", write_fn) != 0 || vfio_mig_export(env, exports, "verifyPages", verify_fn) != 0) return NULL;
  return exports;
}
