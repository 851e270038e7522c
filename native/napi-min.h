// The few Node-API declarations vfio-mig's addons use, written out by hand.
//
// Node-API is a stable C ABI resolved from the node binary when an addon is loaded, so an addon
// built against these needs only a C compiler: no node headers, no node-gyp (scripts/build-native.mjs).
// The signatures are those of node_api.h / js_native_api.h; enums are ints there too.
#ifndef VFIO_MIG_NAPI_MIN_H
#define VFIO_MIG_NAPI_MIN_H
#include <stddef.h>
#include <stdint.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status; // napi_ok is 0
typedef int napi_typedarray_type;
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

extern napi_status napi_get_cb_info(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv, napi_value *this_arg, void **data);
extern napi_status napi_get_value_int32(napi_env env, napi_value value, int32_t *result);
extern napi_status napi_get_value_uint32(napi_env env, napi_value value, uint32_t *result);
extern napi_status napi_create_int32(napi_env env, int32_t value, napi_value *result);
extern napi_status napi_create_uint32(napi_env env, uint32_t value, napi_value *result);
extern napi_status napi_get_boolean(napi_env env, int value, napi_value *result);
extern napi_status napi_get_typedarray_info(napi_env env, napi_value typedarray, napi_typedarray_type *type, size_t *length, void **data, napi_value *arraybuffer, size_t *byte_offset);
extern napi_status napi_create_function(napi_env env, const char *utf8name, size_t length, napi_callback cb, void *data, napi_value *result);
extern napi_status napi_set_named_property(napi_env env, napi_value object, const char *utf8name, napi_value value);
extern napi_status napi_throw_type_error(napi_env env, const char *code, const char *msg);
extern napi_status napi_throw_range_error(napi_env env, const char *code, const char *msg);

/** The version of Node-API the addons need (8: Node 12.22 / 14.17 and later). */
#define VFIO_MIG_NAPI_MODULE_VERSION                                                            \
  __attribute__((visibility("default"))) int32_t node_api_module_get_api_version_v1(void) { \
    return 8;                                                                                \
  }

/** Export `fn` as `name` on `exports`; 0 on success. */
static inline int vfio_mig_export(napi_env env, napi_value exports, const char *name, napi_callback fn) {
  napi_value f = NULL;
  if (napi_create_function(env, name, (size_t)-1, fn, NULL, &f) != 0) return -1;
  return napi_set_named_property(env, exports, name, f) != 0 ? -1 : 0;
}
#endif
