// Mamba-1's selective scan for training: forward and backward, d_state 16, B and C varying in time (one group),
// softplus(delta + delta_bias) as the step, the D skip and the silu(z) gate fused; resets for packed documents.
//
// One thread owns one channel and keeps its 16 states in registers; a block is 64 channels of one sequence. Time
// goes in tiles of kTile steps: the block stages the tile's u, dt, B and C in shared memory (B and C are then read
// once per 64 channels, and every read of them is a broadcast), and each thread walks the tile step by step.
// The backward first runs the recurrence forward to keep each tile's entry state (a scratch buffer the caller
// owns), then walks the tiles in reverse: it re-runs the tile to keep a state every kSub steps in shared memory,
// re-runs each kSub steps into registers, and steps back through them. dB and dC are summed over the warp's
// channels in registers (a transposing butterfly: 16 shuffles for 16 values), over the block's warps in shared
// memory, and written once per block to a partial buffer the caller sums: no atomics, the same bits every run.
// dA, dD and d(delta_bias) are computed only when asked for (LoRA freezes them).
//
// The host side is plain C (called through ctypes): no torch headers, so it builds with nvcc alone in seconds.

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int kState = 16;
constexpr int kThreads = 64;  // channels per block
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // steps per tile
constexpr int kSub = 4;  // steps re-run into registers in the backward
constexpr int kSubs = kTile / kSub;
constexpr int kPitch = kTile + 1;  // row pitch of the per-channel tiles: a thread reads its own row, conflict-free
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace

extern "C" {

// Element strides; every tensor's last (time) dimension is contiguous. Pointers to optional outputs may be null.
struct ScanParams {
    int32_t batch, dim, seqlen, dtype;  // dtype: 0 fp32, 1 fp16, 2 bf16 (u, delta, z, B, C and every gradient)
    const void *u, *delta, *z, *B, *C;
    const float *A, *D, *delta_bias;  // A (dim, 16), D (dim,), delta_bias (dim,)
    const uint8_t *reset;  // (batch, seqlen) contiguous, 1 where a document starts; null: none
    int64_t u_b, u_d, delta_b, delta_d, z_b, z_d, B_b, B_n, C_b, C_n;
    // forward outputs / backward inputs
    void *y;  // (batch, dim, seqlen): <h, C> + D u, before the gate
    void *out_z;  // y * silu(z)
    int64_t y_b, y_d, out_z_b, out_z_d;
    // backward
    const void *dout;  // gradient of out_z
    void *du, *ddelta, *dz;
    int64_t dout_b, dout_d, du_b, du_d, ddelta_b, ddelta_d, dz_b, dz_d;
    float *dBC_partial;  // (dim / 64 rounded up, batch, 2, 16, seqlen): dB then dC, summed by the caller
    float *dA_partial;  // (batch, dim, 16) or null
    float *dD_partial, *ddelta_bias_partial;  // (batch, dim) or null
    float *checkpoints;  // (batch, dim, tiles, 16) scratch
};

int mambaft_scan_fwd(const ScanParams *p, cudaStream_t stream);
int mambaft_scan_bwd(const ScanParams *p, cudaStream_t stream);
int mambaft_scan_tile();
int mambaft_scan_block_channels();
}

namespace {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float softplus(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

template <typename T>
__device__ __forceinline__ const T *at(const void *base, int64_t b_stride, int64_t d_stride, int b, int d) {
    return static_cast<const T *>(base) + b * b_stride + d * d_stride;
}
template <typename T>
__device__ __forceinline__ T *at_mut(void *base, int64_t b_stride, int64_t d_stride, int b, int d) {
    return static_cast<T *>(base) + b * b_stride + d * d_stride;
}

// What a block keeps of one tile. u and dt (and in the backward dy) are per channel, B and C per state; keep is
// 0 where a document starts (the state before it is dropped), else 1.
struct Tile {
    float u[kThreads][kPitch];
    float dt[kThreads][kPitch];
    float B[kState][kTile];
    float C[kState][kTile];
    float keep[kTile];
};

// Stage steps [t0, t0 + len) of the block's channels; steps past len read as zero input, so a thread may run a
// whole tile.
template <typename T>
__device__ void load_tile(Tile &tile, const ScanParams &p, int b, int d0, int t0, int len, const float *bias) {
    for (int i = threadIdx.x; i < kThreads * kTile; i += kThreads) {
        const int r = i / kTile, c = i % kTile, d = d0 + r;
        float u = 0.f, dt = 0.f;
        if (d < p.dim && c < len) {
            u = to_float(at<T>(p.u, p.u_b, p.u_d, b, d)[t0 + c]);
            dt = softplus(to_float(at<T>(p.delta, p.delta_b, p.delta_d, b, d)[t0 + c]) + bias[r]);
        }
        tile.u[r][c] = u;
        tile.dt[r][c] = dt;
    }
    for (int i = threadIdx.x; i < kState * kTile; i += kThreads) {
        const int n = i / kTile, c = i % kTile;
        const bool in = c < len;
        tile.B[n][c] = in ? to_float(at<T>(p.B, p.B_b, p.B_n, b, n)[t0 + c]) : 0.f;
        tile.C[n][c] = in ? to_float(at<T>(p.C, p.C_b, p.C_n, b, n)[t0 + c]) : 0.f;
    }
    if (threadIdx.x < kTile) {
        const int c = threadIdx.x;
        tile.keep[c] = (p.reset != nullptr && c < len && p.reset[int64_t(b) * p.seqlen + t0 + c]) ? 0.f : 1.f;
    }
}

// One step of the recurrence for this thread's channel: h <- exp(dt A) h + dt u B_c.
__device__ __forceinline__ void advance(float (&h)[kState], const float (&A2)[kState], const Tile &tile, int c) {
    const float dt = tile.dt[threadIdx.x][c], dtu = dt * tile.u[threadIdx.x][c], keep = tile.keep[c];
#pragma unroll
    for (int n = 0; n < kState; ++n) h[n] = fmaf(exp2f(dt * A2[n]) * keep, h[n], dtu * tile.B[n][c]);
}

__device__ __forceinline__ void load_A(float (&A2)[kState], const ScanParams &p, int d) {
#pragma unroll
    for (int n = 0; n < kState; ++n) A2[n] = d < p.dim ? p.A[int64_t(d) * kState + n] * kLog2e : 0.f;
}

__device__ __forceinline__ void load_bias(float *bias, const ScanParams &p, int d0) {
    const int d = d0 + threadIdx.x;
    bias[threadIdx.x] = (p.delta_bias != nullptr && d < p.dim) ? p.delta_bias[d] : 0.f;
}

template <typename T>
__global__ __launch_bounds__(kThreads) void scan_fwd_kernel(ScanParams p) {
    __shared__ Tile tile;
    __shared__ float bias[kThreads];
    const int b = blockIdx.y, d0 = blockIdx.x * kThreads, d = d0 + threadIdx.x;
    float A2[kState], h[kState];
    load_A(A2, p, d);
#pragma unroll
    for (int n = 0; n < kState; ++n) h[n] = 0.f;
    const float D = (p.D != nullptr && d < p.dim) ? p.D[d] : 0.f;
    load_bias(bias, p, d0);
    __syncthreads();
    for (int t0 = 0; t0 < p.seqlen; t0 += kTile) {
        const int len = min(kTile, p.seqlen - t0);
        load_tile<T>(tile, p, b, d0, t0, len, bias);
        __syncthreads();
        for (int c = 0; c < kTile; ++c) {
            advance(h, A2, tile, c);
            float y = D * tile.u[threadIdx.x][c];
#pragma unroll
            for (int n = 0; n < kState; ++n) y = fmaf(h[n], tile.C[n][c], y);
            tile.u[threadIdx.x][c] = y;  // the thread's own row: u of this step is read no more
        }
        __syncthreads();
        for (int i = threadIdx.x; i < kThreads * kTile; i += kThreads) {
            const int r = i / kTile, c = i % kTile, dd = d0 + r;
            if (dd >= p.dim || c >= len) continue;
            const float y = tile.u[r][c];
            const float z = to_float(at<T>(p.z, p.z_b, p.z_d, b, dd)[t0 + c]);
            at_mut<T>(p.y, p.y_b, p.y_d, b, dd)[t0 + c] = from_float<T>(y);
            at_mut<T>(p.out_z, p.out_z_b, p.out_z_d, b, dd)[t0 + c] = from_float<T>(y * z * sigmoid(z));
        }
        __syncthreads();
    }
}

// One halving step of warp_sum_transposed: lanes with `kOffset` set keep the upper half of the values, the others
// the lower half, each adding what its partner lane held of the half it keeps.
template <int kHalf, int kOffset>
__device__ __forceinline__ void trade_halves(float (&v)[kState], int lane) {
    const bool upper = lane & kOffset;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
        const float lo = v[i], hi = v[i + kHalf];
        v[i] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, kOffset);
    }
}

// Sum each of v's 16 values over the warp's 32 lanes: 8 + 4 + 2 + 1 shuffles trade halves, one more sums the last
// pair. The sum of value `index` ends in lanes 2·index and 2·index + 1.
__device__ __forceinline__ float warp_sum_transposed(float (&v)[kState], int lane) {
    trade_halves<8, 16>(v, lane);
    trade_halves<4, 8>(v, lane);
    trade_halves<2, 4>(v, lane);
    trade_halves<1, 2>(v, lane);
    return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}

template <typename T, bool kGradA>
__global__ __launch_bounds__(kThreads) void scan_bwd_kernel(ScanParams p) {
    __shared__ Tile tile;
    __shared__ float dy[kThreads][kPitch];  // dout * silu(z)
    __shared__ float states[kSubs][kState][kThreads];  // the state before every kSub-th step of the tile
    __shared__ float dBC[kWarps][2][kState][kTile];  // per warp: dB, dC
    __shared__ float bias[kThreads];
    const int b = blockIdx.y, d0 = blockIdx.x * kThreads, d = d0 + threadIdx.x;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int tiles = (p.seqlen + kTile - 1) / kTile;
    float A2[kState];
    load_A(A2, p, d);
    const float D = (p.D != nullptr && d < p.dim) ? p.D[d] : 0.f;
    load_bias(bias, p, d0);
    float *checkpoints = p.checkpoints + (int64_t(b) * p.dim + min(d, p.dim - 1)) * tiles * kState;
    __syncthreads();

    // Pass 1: each tile's entry state.
    {
        float h[kState];
#pragma unroll
        for (int n = 0; n < kState; ++n) h[n] = 0.f;
        for (int k = 0; k < tiles; ++k) {
            if (d < p.dim) {
#pragma unroll
                for (int n = 0; n < kState; n += 4)
                    *reinterpret_cast<float4 *>(checkpoints + k * kState + n) = make_float4(h[n], h[n + 1], h[n + 2], h[n + 3]);
            }
            if (k == tiles - 1) break;
            load_tile<T>(tile, p, b, d0, k * kTile, kTile, bias);
            __syncthreads();
            for (int c = 0; c < kTile; ++c) advance(h, A2, tile, c);
            __syncthreads();
        }
    }

    // Pass 2: tiles in reverse. g is dL/dh of the step after the current one, already multiplied by its decay.
    float g[kState], dA[kState];
#pragma unroll
    for (int n = 0; n < kState; ++n) g[n] = dA[n] = 0.f;
    float dD = 0.f, dbias = 0.f;
    for (int k = tiles - 1; k >= 0; --k) {
        const int t0 = k * kTile, len = min(kTile, p.seqlen - t0);
        load_tile<T>(tile, p, b, d0, t0, len, bias);
        for (int i = threadIdx.x; i < kThreads * kTile; i += kThreads) {
            const int r = i / kTile, c = i % kTile, dd = d0 + r;
            float v = 0.f;
            if (dd < p.dim && c < len) {
                const float z = to_float(at<T>(p.z, p.z_b, p.z_d, b, dd)[t0 + c]);
                const float dout = to_float(at<T>(p.dout, p.dout_b, p.dout_d, b, dd)[t0 + c]);
                const float y = to_float(at<T>(p.y, p.y_b, p.y_d, b, dd)[t0 + c]);
                const float s = sigmoid(z);
                v = dout * z * s;
                at_mut<T>(p.dz, p.dz_b, p.dz_d, b, dd)[t0 + c] = from_float<T>(dout * y * s * (1.f + z * (1.f - s)));
                if (p.out_z != nullptr) at_mut<T>(p.out_z, p.out_z_b, p.out_z_d, b, dd)[t0 + c] = from_float<T>(y * z * s);
            }
            dy[r][c] = v;
        }
        __syncthreads();
        {
            float h[kState];
            const float *entry = checkpoints + k * kState;
#pragma unroll
            for (int n = 0; n < kState; ++n) h[n] = d < p.dim ? entry[n] : 0.f;
#pragma unroll
            for (int s = 0; s < kSubs; ++s) {
#pragma unroll
                for (int n = 0; n < kState; ++n) states[s][n][threadIdx.x] = h[n];
                if (s == kSubs - 1) break;
#pragma unroll
                for (int c = s * kSub; c < (s + 1) * kSub; ++c) advance(h, A2, tile, c);
            }
        }
        for (int s = kSubs - 1; s >= 0; --s) {
            float before[kSub][kState];  // the state before each step of this run
#pragma unroll
            for (int n = 0; n < kState; ++n) before[0][n] = states[s][n][threadIdx.x];
#pragma unroll
            for (int j = 1; j < kSub; ++j) {
#pragma unroll
                for (int n = 0; n < kState; ++n) before[j][n] = before[j - 1][n];
                advance(before[j], A2, tile, s * kSub + j - 1);
            }
#pragma unroll
            for (int j = kSub - 1; j >= 0; --j) {
                const int c = s * kSub + j;
                const float dt = tile.dt[threadIdx.x][c], u = tile.u[threadIdx.x][c], dtu = dt * u;
                const float keep = tile.keep[c], dyc = dy[threadIdx.x][c];
                float dB[kState], dC[kState], gB = 0.f, gAh = 0.f;
#pragma unroll
                for (int n = 0; n < kState; ++n) {
                    const float decay = exp2f(dt * A2[n]) * keep;
                    const float kept = decay * before[j][n];
                    const float Bn = tile.B[n][c];
                    dC[n] = dyc * fmaf(dtu, Bn, kept);
                    g[n] = fmaf(tile.C[n][c], dyc, g[n]);
                    dB[n] = g[n] * dtu;
                    gB = fmaf(g[n], Bn, gB);
                    const float gk = g[n] * kept;
                    gAh = fmaf(gk, A2[n], gAh);
                    if (kGradA) dA[n] = fmaf(gk, dt, dA[n]);
                    g[n] *= decay;
                }
                const float ddt = fmaf(gAh, kLn2, u * gB);
                // softplus' derivative, sigmoid(delta + bias), from dt: 1 - exp(-dt)
                const float ddelta = ddt * -expm1f(-dt);
                dD = fmaf(dyc, u, dD);
                dbias += ddelta;
                tile.u[threadIdx.x][c] = fmaf(dt, gB, D * dyc);  // du; this step's u is read no more
                tile.dt[threadIdx.x][c] = ddelta;
                const float sumB = warp_sum_transposed(dB, lane);
                const float sumC = warp_sum_transposed(dC, lane);
                if ((lane & 1) == 0) {
                    dBC[warp][0][lane >> 1][c] = sumB;
                    dBC[warp][1][lane >> 1][c] = sumC;
                }
            }
        }
        __syncthreads();
        for (int i = threadIdx.x; i < kThreads * kTile; i += kThreads) {
            const int r = i / kTile, c = i % kTile, dd = d0 + r;
            if (dd >= p.dim || c >= len) continue;
            at_mut<T>(p.du, p.du_b, p.du_d, b, dd)[t0 + c] = from_float<T>(tile.u[r][c]);
            at_mut<T>(p.ddelta, p.ddelta_b, p.ddelta_d, b, dd)[t0 + c] = from_float<T>(tile.dt[r][c]);
        }
        float *partial = p.dBC_partial + (int64_t(blockIdx.x) * p.batch + b) * 2 * kState * p.seqlen;
        for (int i = threadIdx.x; i < 2 * kState * kTile; i += kThreads) {
            const int which = i / (kState * kTile), n = (i / kTile) % kState, c = i % kTile;
            if (c >= len) continue;
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) sum += dBC[w][which][n][c];
            partial[(which * kState + n) * int64_t(p.seqlen) + t0 + c] = sum;
        }
        __syncthreads();
    }
    if (d >= p.dim) return;
    const int64_t row = int64_t(b) * p.dim + d;
    if (kGradA) {
#pragma unroll
        for (int n = 0; n < kState; ++n) p.dA_partial[row * kState + n] = dA[n];
    }
    if (p.dD_partial != nullptr) p.dD_partial[row] = dD;
    if (p.ddelta_bias_partial != nullptr) p.ddelta_bias_partial[row] = dbias;
}

template <typename T>
int launch_fwd(const ScanParams &p, cudaStream_t stream) {
    const dim3 grid((p.dim + kThreads - 1) / kThreads, p.batch);
    scan_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
int launch_bwd(const ScanParams &p, cudaStream_t stream) {
    const dim3 grid((p.dim + kThreads - 1) / kThreads, p.batch);
    if (p.dA_partial != nullptr)
        scan_bwd_kernel<T, true><<<grid, kThreads, 0, stream>>>(p);
    else
        scan_bwd_kernel<T, false><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

extern "C" {

int mambaft_scan_fwd(const ScanParams *p, cudaStream_t stream) {
    switch (p->dtype) {
        case 0: return launch_fwd<float>(*p, stream);
        case 1: return launch_fwd<__half>(*p, stream);
        case 2: return launch_fwd<__nv_bfloat16>(*p, stream);
        default: return int(cudaErrorInvalidValue);
    }
}

int mambaft_scan_bwd(const ScanParams *p, cudaStream_t stream) {
    switch (p->dtype) {
        case 0: return launch_bwd<float>(*p, stream);
        case 1: return launch_bwd<__half>(*p, stream);
        case 2: return launch_bwd<__nv_bfloat16>(*p, stream);
        default: return int(cudaErrorInvalidValue);
    }
}

int mambaft_scan_tile() { return kTile; }
int mambaft_scan_block_channels() { return kThreads; }
}
