#!/usr/bin/python3
"""imagebuild-cuda-probe: one real CUDA call from this image's own user space.

Installed by imagebuild (role cuda_runtime). It loads the image's libcudart.so.12 (the locked
CUDA runtime) and the driver's libcuda.so.1 (the host's in a container, the image's in the VM),
then: device count, a 64 MiB allocation, a host -> device -> host copy round trip, and one
kernel (PTX below, JIT-compiled by the driver) whose result is checked on the host. It prints
one `key: value` line per step and exits 0 only if every step worked; the first failure is named
with CUDA's own error string. Standard library only (ctypes), so any image with python3 runs it.
"""

from __future__ import annotations

import ctypes
import sys

N = 16 * 1024 * 1024  # float32 elements: 64 MiB
# y = 2 * x + 1, one thread per element (sm_50+ PTX: every driver since CUDA 11 JITs it).
PTX = b"""
.version 7.0
.target sm_50
.address_size 64

.visible .entry axpb(.param .u64 p_data, .param .u32 p_n)
{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<5>;

    ld.param.u64 %rd1, [p_data];
    ld.param.u32 %r1, [p_n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r5, 4;
    add.s64 %rd4, %rd2, %rd3;
    ld.global.f32 %f1, [%rd4];
    fma.rn.f32 %f2, %f1, 0f40000000, 0f3F800000;
    st.global.f32 [%rd4], %f2;
DONE:
    ret;
}
\0"""
H2D, D2H = 1, 2  # cudaMemcpyKind


class ProbeError(Exception):
    pass


def say(key: str, value: object) -> None:
    print(f"{key}: {value}", flush=True)


def load(name: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(name)
    except OSError as e:
        raise ProbeError(f"cannot load {name}: {e}") from None


class Runtime:
    """The few cudart calls the probe needs, each checked."""

    def __init__(self) -> None:
        self.lib = load("libcudart.so.12")
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def __call__(self, fn: str, *args: object) -> None:
        rc = getattr(self.lib, fn)(*args)
        if rc != 0:
            text = self.lib.cudaGetErrorString(rc).decode()
            raise ProbeError(f"{fn}: error {rc}: {text}")


class Driver:
    """The driver API (libcuda.so.1), for loading and launching the PTX kernel."""

    def __init__(self) -> None:
        self.lib = load("libcuda.so.1")

    def __call__(self, fn: str, *args: object) -> None:
        rc = getattr(self.lib, fn)(*args)
        if rc != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(text))
            raise ProbeError(f"{fn}: error {rc}: {(text.value or b'?').decode()}")


def version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def probe() -> None:
    rt = Runtime()
    v = ctypes.c_int()
    rt("cudaRuntimeGetVersion", ctypes.byref(v))
    say("cuda runtime", version(v.value))
    rt("cudaDriverGetVersion", ctypes.byref(v))
    say("cuda driver api", version(v.value) if v.value else "none (no driver loaded)")
    count = ctypes.c_int()
    rt("cudaGetDeviceCount", ctypes.byref(count))
    say("devices", count.value)
    if count.value < 1:
        raise ProbeError("no CUDA device")
    name = ctypes.create_string_buffer(256)
    drv = Driver()
    dev = ctypes.c_int()
    drv("cuInit", 0)
    drv("cuDeviceGet", ctypes.byref(dev), 0)
    drv("cuDeviceGetName", name, 256, dev)
    major, minor = ctypes.c_int(), ctypes.c_int()
    rt("cudaDeviceGetAttribute", ctypes.byref(major), 75, 0)  # ComputeCapabilityMajor
    rt("cudaDeviceGetAttribute", ctypes.byref(minor), 76, 0)  # ComputeCapabilityMinor
    say("device 0", f"{name.value.decode()} (sm_{major.value}{minor.value})")

    host = (ctypes.c_float * N)(*range(1024))  # 0..1023, then zeros
    back = (ctypes.c_float * N)()
    dptr = ctypes.c_void_p()
    rt("cudaSetDevice", 0)
    rt("cudaMalloc", ctypes.byref(dptr), ctypes.c_size_t(N * 4))
    say("allocation", f"{N * 4 // 2**20} MiB")
    try:
        rt("cudaMemcpy", dptr, host, ctypes.c_size_t(N * 4), H2D)
        rt("cudaMemcpy", back, dptr, ctypes.c_size_t(N * 4), D2H)
        if bytes(back) != bytes(host):
            raise ProbeError("copy round trip: the bytes that came back differ")
        say("copy round trip", f"{N * 4 // 2**20} MiB host -> device -> host, equal")

        # cudart made the device's primary context current on this thread: the driver API's
        # module and launch calls use it.
        module, func = ctypes.c_void_p(), ctypes.c_void_p()
        drv("cuModuleLoadData", ctypes.byref(module), ctypes.c_char_p(PTX))
        drv("cuModuleGetFunction", ctypes.byref(func), module, b"axpb")
        data, n = ctypes.c_uint64(dptr.value or 0), ctypes.c_uint32(N)
        params = (ctypes.c_void_p * 2)(ctypes.addressof(data), ctypes.addressof(n))
        threads = 256
        blocks = (N + threads - 1) // threads
        drv("cuLaunchKernel", func, blocks, 1, 1, threads, 1, 1, 0, None, params, None)
        drv("cuCtxSynchronize")
        rt("cudaMemcpy", back, dptr, ctypes.c_size_t(N * 4), D2H)
        bad = [i for i in (0, 1, 1023, 1024, N - 1) if back[i] != 2 * host[i] + 1]
        if bad:
            i = bad[0]
            raise ProbeError(f"kernel: element {i} is {back[i]}, want {2 * host[i] + 1}")
        say("kernel", f"y = 2x + 1 over {N} floats ({blocks} blocks x {threads}), checked")
    finally:
        rt("cudaFree", dptr)


def main() -> int:
    try:
        probe()
    except ProbeError as e:
        print(f"imagebuild-cuda-probe: {e}", file=sys.stderr)
        return 1
    say("result", "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
