// vfio-mig-sockopt: a Node-API addon with the fd options Node does not expose.
//
// sndbuf(fd, bytes): set SO_SNDBUF of the socket `fd` when bytes > 0, then return the size the
// kernel uses (getsockopt: twice what it accepted, capped by net.core.wmem_max), or -errno.
// pipesz(fd, bytes): set the capacity of the pipe or FIFO `fd` (F_SETPIPE_SZ) when bytes > 0,
// then return it (F_GETPIPE_SZ: rounded up to a power-of-two number of pages), or -errno.
// mallopt(param, value): glibc's mallopt(3) (1: set, 0: refused), -ENOSYS without glibc. What
// src/streams/malloc-tuning.ts tuneMalloc() sets at run time instead of through the environment.
//
// Why: on a unix stream socket the sender's SO_SNDBUF is the whole window between two processes.
// At the default 208 KiB a 1 GiB device stream crosses in ~5000 windows, each a wake-up of the
// other side; docs/PERFORMANCE.md has the measurements. A pipe's capacity (64 KiB by default) is
// the same window for pipes and FIFOs.
//
// Built by scripts/build-native.mjs against native/napi-min.h (a C compiler is all it needs);
// optional: without it the sockets keep the kernel's default buffers (src/streams/fd-tuning.ts).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include "../napi-min.h"

static napi_value int_result(napi_env env, int32_t v) {
  napi_value out = NULL;
  napi_create_int32(env, v, &out);
  return out;
}

/** Every function takes two integers: read them, or throw a TypeError naming `usage` and return -1. */
static int two_int32(napi_env env, napi_callback_info info, const char *usage, int32_t *first, int32_t *second) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 2 ||
      napi_get_value_int32(env, argv[0], first) != 0 || napi_get_value_int32(env, argv[1], second) != 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", usage);
    return -1;
  }
  return 0;
}

static napi_value sndbuf(napi_env env, napi_callback_info info) {
  int32_t fd, bytes;
  if (two_int32(env, info, "sndbuf(fd, bytes) takes two integers", &fd, &bytes) != 0) return NULL;
  if (bytes > 0) {
    int v = bytes;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v) != 0) return int_result(env, -errno);
  }
  int got = 0;
  socklen_t len = sizeof got;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) != 0) return int_result(env, -errno);
  return int_result(env, got);
}

static napi_value pipesz(napi_env env, napi_callback_info info) {
  int32_t fd, bytes;
  if (two_int32(env, info, "pipesz(fd, bytes) takes two integers", &fd, &bytes) != 0) return NULL;
  if (bytes > 0 && fcntl(fd, F_SETPIPE_SZ, bytes) < 0) return int_result(env, -errno);
  int got = fcntl(fd, F_GETPIPE_SZ);
  return int_result(env, got < 0 ? -errno : got);
}

static napi_value do_mallopt(napi_env env, napi_callback_info info) {
  int32_t param, value;
  if (two_int32(env, info, "mallopt(param, value) takes two integers", &param, &value) != 0) return NULL;
#ifdef __GLIBC__
  return int_result(env, mallopt(param, value));
#else
  (void)param;
  (void)value;
  return int_result(env, -ENOSYS);
#endif
}

VFIO_MIG_NAPI_MODULE_VERSION

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  if (vfio_mig_export(env, exports, "sndbuf", sndbuf) != 0 || vfio_mig_export(env, exports, "pipesz", pipesz) != 0 ||
      vfio_mig_export(env, exports, "mallopt", do_mallopt) != 0)
    return NULL;
  return exports;
}
