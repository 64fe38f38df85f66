// Mamba-1's selective scan for training: forward and backward, d_state 16, B and C varying in time (one group),
// softplus(delta + delta_bias) as the step, the D skip and the silu(z) gate fused; resets for packed documents.
//
// Two threads own one channel, 8 of its 16 states each, in registers; a block is 64 channels of one sequence.
// Time goes in tiles of kTile steps: the block stages the tile's u, dt, B and C in shared memory (B and C are read
// once per 64 channels, every read of them a broadcast) while the next tile loads, and each thread walks the tile
// step by step. The backward first runs the recurrence forward to keep each tile's entry state (a scratch buffer
// the caller owns), then walks the tiles in reverse: it re-runs the tile to keep a state every kSub steps in shared
// memory, re-runs each kSub steps into registers, and steps back through them. dB and dC are summed over the warp's
// channels in registers (a transposing butterfly), over the block's warps in shared memory, and written once per
// block to a partial buffer the caller sums: no atomics, the same bits every run. dA, dD and d(delta_bias) are
// computed only when asked for (LoRA freezes them).
//
// The host side is plain C (called through ctypes): no torch headers, so it builds with nvcc alone in seconds.

#include <cstddef>
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int kState = 16;
constexpr int kPart = 8;  // states per thread
constexpr int kChannels = 64;  // per block
constexpr int kThreads = kChannels * kState / kPart;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // steps per tile
constexpr int kSub = 4;  // steps re-run into registers in the backward
constexpr int kSubs = kTile / kSub;
constexpr int kPitch = kTile + 1;  // row pitch of the tiles in shared memory: rows a warp reads at once hit distinct banks
// 4 blocks of 128 threads fill a Hopper SM's registers at 128 each; at Mamba 1.4B's shape (8 x 4096 channels)
// that is every block at once.
constexpr int kBlocksPerSM = 4;
constexpr int kStatePitch = kState + 4;  // B and C rows: 16-byte aligned, staged without 8-way bank conflicts
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
    float *dBC_partial;  // (blocks along dim, batch, 2, 16, seqlen): dB then dC, summed by the caller
    float *dA_partial;  // (batch, dim, 16) or null
    float *dD_partial, *ddelta_bias_partial;  // (batch, dim) or null
    float *checkpoints;  // (batch, dim, tiles, 16) scratch
};

int mambaft_scan_fwd(const ScanParams *p, cudaStream_t stream);
int mambaft_scan_bwd(const ScanParams *p, cudaStream_t stream);
int mambaft_scan_tile();
int mambaft_scan_block_channels();
int mambaft_scan_param_offsets(int64_t *out, int capacity);
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

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }


// This thread's channel within the block and which half of the states it holds.
__device__ __forceinline__ int my_channel() { return threadIdx.x / 2; }
__device__ __forceinline__ int my_part() { return threadIdx.x % 2; }

// What a block keeps of one tile. u and dt (and in the backward dy) are per channel; B and C by step, so a
// thread reads its 8 states of a step as two 16-byte words; cut is -inf where a document starts (added to the
// decay's exponent, it drops the state before), else 0.
struct Tile {
    float u[kChannels][kPitch];
    float dt[kChannels][kPitch];
    alignas(16) float B[kTile][kStatePitch];
    alignas(16) float C[kTile][kStatePitch];
    float cut[kTile];
};

// This thread's 8 values of a step's row of B or C.
__device__ __forceinline__ void read_part(float (&v)[kPart], const float (&row)[kStatePitch]) {
    const float4 *words = reinterpret_cast<const float4 *>(row + my_part() * kPart);
    const float4 lo = words[0], hi = words[1];
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}

// A thread's share of a (kChannels x kTile steps) tile is one step, threadIdx.x % kTile, of rows
// threadIdx.x / kTile + j·kRowsPerPass: consecutive threads read consecutive steps of a row. Every load of a
// share is issued before any is used, so a tile costs one memory latency, not one per element.
constexpr int kRowsPerPass = kThreads / kTile;
constexpr int kShare = kChannels * kTile / kThreads;  // elements of a (channels x steps) tile per thread
constexpr int kStateShare = kState * kTile / kThreads;  // elements of a (states x steps) tile per thread
static_assert(kStateShare >= 1 && kRowsPerPass * kStateShare == kState, "a state tile splits evenly");

__device__ __forceinline__ int share_row(int j) { return threadIdx.x / kTile + j * kRowsPerPass; }
__device__ __forceinline__ int share_step() { return threadIdx.x % kTile; }

// This thread's share of a tile of one (batch, dim, seqlen) tensor: element j is first[j * step]. Addresses are
// made once per tile and stepped, not recomputed from the strides per element (which was most of the staging).
template <typename T>
struct Share {
    T *first;
    int64_t step;
    __device__ __forceinline__ Share(const void *base, int64_t b_stride, int64_t d_stride, int b, int d0, int t0)
        : first(const_cast<T *>(static_cast<const T *>(base)) + b * b_stride + (d0 + share_row(0)) * d_stride + t0 +
                share_step()),
          step(kRowsPerPass * d_stride) {}
};

// Whether share element j is inside the tensor: its channel below dim, its step below the tile's length.
__device__ __forceinline__ bool share_inside(int j, const ScanParams &p, int d0, int len) {
    return d0 + share_row(j) < p.dim && share_step() < len;
}

template <typename T>
__device__ __forceinline__ void fetch(T (&v)[kShare], const void *base, int64_t b_stride, int64_t d_stride,
                                      const ScanParams &p, int b, int d0, int t0, int len) {
    const Share<T> share(base, b_stride, d_stride, b, d0, t0);
    const T *at = share.first;
#pragma unroll
    for (int j = 0; j < kShare; ++j, at += share.step) v[j] = share_inside(j, p, d0, len) ? *at : from_float<T>(0.f);
}

// Write share element j of a tile where it is inside the tensor.
template <typename T>
__device__ __forceinline__ void store(const Share<T> &share, int j, float value, const ScanParams &p, int d0, int len) {
    if (share_inside(j, p, d0, len)) share.first[j * share.step] = from_float<T>(value);
}

// The inputs of one tile of the recurrence, as loaded, before they are staged.
template <typename T>
struct Fetched {
    T u[kShare], delta[kShare], B[kStateShare], C[kStateShare];
    bool reset;
};

template <typename T>
__device__ __forceinline__ void fetch_inputs(Fetched<T> &f, const ScanParams &p, int b, int d0, int t0, int len) {
    fetch<T>(f.u, p.u, p.u_b, p.u_d, p, b, d0, t0, len);
    fetch<T>(f.delta, p.delta, p.delta_b, p.delta_d, p, b, d0, t0, len);
    const int c = share_step();
    const Share<T> B(p.B, p.B_b, p.B_n, b, 0, t0), C(p.C, p.C_b, p.C_n, b, 0, t0);
#pragma unroll
    for (int j = 0; j < kStateShare; ++j) {
        f.B[j] = c < len ? B.first[j * B.step] : from_float<T>(0.f);
        f.C[j] = c < len ? C.first[j * C.step] : from_float<T>(0.f);
    }
    f.reset = p.reset != nullptr && c < len && p.reset[int64_t(b) * p.seqlen + t0 + c];
}

// Steps past the tile's length (and channels past dim) stage as zero input with dt 0: the state passes unchanged,
// so a thread may run a whole tile.
// `sig`, if given, gets softplus' derivative, sigmoid(delta + bias), which the backward needs.
template <typename T>
__device__ __forceinline__ void stage_inputs(Tile &tile, const Fetched<T> &f, const float *bias, const ScanParams &p,
                                             int d0, int len, float (*sig)[kPitch] = nullptr) {
    const int c = share_step();
#pragma unroll
    for (int j = 0; j < kShare; ++j) {
        const int r = share_row(j);
        const float x = to_float(f.delta[j]) + bias[r], e = __expf(x);
        const bool inside = share_inside(j, p, d0, len);
        tile.u[r][c] = to_float(f.u[j]);
        // softplus: log(1 + e^x), two fast intrinsics; below x = -16 it is 0 where the true value is under 1e-7
        tile.dt[r][c] = inside ? (x <= 20.f ? __logf(1.f + e) : x) : 0.f;
        if (sig != nullptr) sig[r][c] = x <= 20.f ? e / (1.f + e) : 1.f;
    }
#pragma unroll
    for (int j = 0; j < kStateShare; ++j) {
        tile.B[c][share_row(j)] = to_float(f.B[j]);
        tile.C[c][share_row(j)] = to_float(f.C[j]);
    }
    if (threadIdx.x < kTile) tile.cut[c] = f.reset ? -INFINITY : 0.f;
}

// One step of the recurrence for this thread's states: h <- exp(dt A) h + dt u B_c.
__device__ __forceinline__ void advance(float (&h)[kPart], const float (&A2)[kPart], const Tile &tile, int c) {
    const int r = my_channel();
    const float dt = tile.dt[r][c], dtu = dt * tile.u[r][c], cut = tile.cut[c];
    float B[kPart];
    read_part(B, tile.B[c]);
#pragma unroll
    for (int i = 0; i < kPart; ++i) h[i] = fmaf(exp2f(fmaf(dt, A2[i], cut)), h[i], dtu * B[i]);
}

// A is read pre-multiplied by log2(e), so each decay is one exp2.
__device__ __forceinline__ void load_A(float (&A2)[kPart], const ScanParams &p, int d) {
    const int n0 = my_part() * kPart;
#pragma unroll
    for (int i = 0; i < kPart; ++i) A2[i] = d < p.dim ? p.A[int64_t(d) * kState + n0 + i] * kLog2e : 0.f;
}

__device__ __forceinline__ void load_bias(float *bias, const ScanParams &p, int d0) {
    for (int r = threadIdx.x; r < kChannels; r += kThreads)
        bias[r] = (p.delta_bias != nullptr && d0 + r < p.dim) ? p.delta_bias[d0 + r] : 0.f;
}

// The sum over the channel's two threads, which sit in adjacent lanes.
__device__ __forceinline__ float channel_sum(float x) { return x + __shfl_xor_sync(0xffffffffu, x, 1); }

template <typename T>
__global__ __launch_bounds__(kThreads, kBlocksPerSM) void scan_fwd_kernel(ScanParams p) {
    __shared__ Tile tile;
    __shared__ float bias[kChannels];
    const int b = blockIdx.y, d0 = blockIdx.x * kChannels, r = my_channel(), d = d0 + r;
    float A2[kPart], h[kPart];
    load_A(A2, p, d);
#pragma unroll
    for (int i = 0; i < kPart; ++i) h[i] = 0.f;
    const float D = (p.D != nullptr && d < p.dim) ? p.D[d] : 0.f;
    load_bias(bias, p, d0);
    // The next tile's inputs load while this one runs.
    Fetched<T> next;
    T z[kShare];
    fetch_inputs<T>(next, p, b, d0, 0, min(kTile, p.seqlen));
    fetch<T>(z, p.z, p.z_b, p.z_d, p, b, d0, 0, min(kTile, p.seqlen));
    __syncthreads();
    for (int t0 = 0; t0 < p.seqlen; t0 += kTile) {
        const int len = min(kTile, p.seqlen - t0);
        stage_inputs<T>(tile, next, bias, p, d0, len);
        float gate[kShare];  // silu(z) of this thread's share
#pragma unroll
        for (int j = 0; j < kShare; ++j) gate[j] = to_float(z[j]) * sigmoid(to_float(z[j]));
        __syncthreads();
        if (t0 + kTile < p.seqlen) {
            const int next_len = min(kTile, p.seqlen - t0 - kTile);
            fetch_inputs<T>(next, p, b, d0, t0 + kTile, next_len);
            fetch<T>(z, p.z, p.z_b, p.z_d, p, b, d0, t0 + kTile, next_len);
        }
#pragma unroll
        for (int c = 0; c < kTile; ++c) {
            advance(h, A2, tile, c);
            float y = 0.f, C[kPart];
            read_part(C, tile.C[c]);
#pragma unroll
            for (int i = 0; i < kPart; ++i) y = fmaf(h[i], C[i], y);
            // The shuffle waits for the partner's y, which needed its read of u: u can be overwritten.
            y = channel_sum(y);
            if (my_part() == 0) tile.u[r][c] = fmaf(D, tile.u[r][c], y);
        }
        __syncthreads();
        const Share<T> y_out(p.y, p.y_b, p.y_d, b, d0, t0), out_z(p.out_z, p.out_z_b, p.out_z_d, b, d0, t0);
#pragma unroll
        for (int j = 0; j < kShare; ++j) {
            const float y = tile.u[share_row(j)][share_step()];
            store(y_out, j, y, p, d0, len);
            store(out_z, j, y * gate[j], p, d0, len);
        }
        __syncthreads();
    }
}

// One halving step of warp_sum_transposed: lanes with `kOffset` set keep the upper half of the values, the others
// the lower half, each adding what its partner lane held of the half it keeps.
template <int kHalf, int kOffset>
__device__ __forceinline__ void trade_halves(float (&v)[kPart], int lane) {
    const bool upper = lane & kOffset;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
        const float lo = v[i], hi = v[i + kHalf];
        v[i] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, kOffset);
    }
}

// Sum each of v's 8 values over the warp's 16 channels (lanes of the same part, bit 0): 4 + 2 + 1 shuffles trade
// halves, one more sums the last pair. The sum of this part's value `index` ends in the lanes with bits 4..2 equal
// to index and bit 1 either (index: warp_sum_index).
__device__ __forceinline__ float warp_sum_transposed(float (&v)[kPart], int lane) {
    trade_halves<4, 16>(v, lane);
    trade_halves<2, 8>(v, lane);
    trade_halves<1, 4>(v, lane);
    return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 2);
}

__device__ __forceinline__ int warp_sum_index(int lane) {
    return (lane & 1) * kPart + ((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1);
}

template <typename T, bool kGradA>
__global__ __launch_bounds__(kThreads, kBlocksPerSM) void scan_bwd_kernel(ScanParams p) {
    __shared__ Tile tile;
    __shared__ float dy[kChannels][kPitch];  // dout * silu(z)
    __shared__ float sig[kChannels][kPitch];  // sigmoid(delta + bias)
    __shared__ float states[kSubs][kPart][kThreads];  // each thread's states before every kSub-th step of the tile
    __shared__ float dBC[kWarps][2][kState][kTile];  // per warp: dB, dC
    __shared__ float bias[kChannels];
    const int b = blockIdx.y, d0 = blockIdx.x * kChannels, r = my_channel(), d = d0 + r;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n0 = my_part() * kPart;
    const int tiles = (p.seqlen + kTile - 1) / kTile;
    float A2[kPart];
    load_A(A2, p, d);
    const float D = (p.D != nullptr && d < p.dim) ? p.D[d] : 0.f;
    load_bias(bias, p, d0);
    float *checkpoints = p.checkpoints + (int64_t(b) * p.dim + min(d, p.dim - 1)) * tiles * kState + n0;
    __syncthreads();

    // Pass 1: each tile's entry state; the next tile's inputs load while this one runs.
    {
        float h[kPart];
#pragma unroll
        for (int i = 0; i < kPart; ++i) h[i] = 0.f;
        Fetched<T> next;
        if (tiles > 1) fetch_inputs<T>(next, p, b, d0, 0, kTile);
        for (int k = 0; k < tiles; ++k) {
            if (d < p.dim) {
#pragma unroll
                for (int i = 0; i < kPart; i += 4)
                    *reinterpret_cast<float4 *>(checkpoints + k * kState + i) =
                        make_float4(h[i], h[i + 1], h[i + 2], h[i + 3]);
            }
            if (k == tiles - 1) break;
            stage_inputs<T>(tile, next, bias, p, d0, kTile);
            __syncthreads();
            if (k + 2 < tiles) fetch_inputs<T>(next, p, b, d0, (k + 1) * kTile, kTile);
#pragma unroll
            for (int c = 0; c < kTile; ++c) advance(h, A2, tile, c);
            __syncthreads();
        }
    }

    // Pass 2: tiles in reverse. g is dL/dh of the step after the current one, already multiplied by its decay.
    float g[kPart], dA[kPart];
#pragma unroll
    for (int i = 0; i < kPart; ++i) g[i] = dA[i] = 0.f;
    float dD = 0.f, dbias = 0.f;
    for (int k = tiles - 1; k >= 0; --k) {
        const int t0 = k * kTile, len = min(kTile, p.seqlen - t0);
        {
            Fetched<T> in;
            T z[kShare], dout[kShare], y[kShare];
            fetch_inputs<T>(in, p, b, d0, t0, len);
            fetch<T>(z, p.z, p.z_b, p.z_d, p, b, d0, t0, len);
            fetch<T>(dout, p.dout, p.dout_b, p.dout_d, p, b, d0, t0, len);
            fetch<T>(y, p.y, p.y_b, p.y_d, p, b, d0, t0, len);
            stage_inputs<T>(tile, in, bias, p, d0, len, sig);
            const Share<T> dz(p.dz, p.dz_b, p.dz_d, b, d0, t0), out_z(p.out_z, p.out_z_b, p.out_z_d, b, d0, t0);
#pragma unroll
            for (int j = 0; j < kShare; ++j) {
                const float zf = to_float(z[j]), s = sigmoid(zf), dof = to_float(dout[j]), yf = to_float(y[j]);
                dy[share_row(j)][share_step()] = dof * zf * s;
                store(dz, j, dof * yf * s * (1.f + zf * (1.f - s)), p, d0, len);
                if (p.out_z != nullptr) store(out_z, j, yf * zf * s, p, d0, len);
            }
        }
        __syncthreads();
        {
            float h[kPart];
            const float *entry = checkpoints + k * kState;
#pragma unroll
            for (int i = 0; i < kPart; ++i) h[i] = d < p.dim ? entry[i] : 0.f;
#pragma unroll
            for (int s = 0; s < kSubs; ++s) {
#pragma unroll
                for (int i = 0; i < kPart; ++i) states[s][i][threadIdx.x] = h[i];
                if (s == kSubs - 1) break;
#pragma unroll
                for (int c = s * kSub; c < (s + 1) * kSub; ++c) advance(h, A2, tile, c);
            }
        }
        for (int s = kSubs - 1; s >= 0; --s) {
            float before[kSub][kPart];  // the states before each step of this run
#pragma unroll
            for (int i = 0; i < kPart; ++i) before[0][i] = states[s][i][threadIdx.x];
#pragma unroll
            for (int j = 1; j < kSub; ++j) {
#pragma unroll
                for (int i = 0; i < kPart; ++i) before[j][i] = before[j - 1][i];
                advance(before[j], A2, tile, s * kSub + j - 1);
            }
            float du[kSub], ddelta[kSub];
#pragma unroll
            for (int j = kSub - 1; j >= 0; --j) {
                const int c = s * kSub + j;
                const float dt = tile.dt[r][c], u = tile.u[r][c], dtu = dt * u;
                const float cut = tile.cut[c], dyc = dy[r][c];
                float dB[kPart], dC[kPart], B[kPart], C[kPart], gB = 0.f, gAh = 0.f;
                read_part(B, tile.B[c]);
                read_part(C, tile.C[c]);
#pragma unroll
                for (int i = 0; i < kPart; ++i) {
                    const float decay = exp2f(fmaf(dt, A2[i], cut));
                    const float kept = decay * before[j][i];
                    dC[i] = dyc * fmaf(dtu, B[i], kept);
                    g[i] = fmaf(C[i], dyc, g[i]);
                    dB[i] = g[i] * dtu;
                    gB = fmaf(g[i], B[i], gB);
                    const float gk = g[i] * kept;
                    gAh = fmaf(gk, A2[i], gAh);
                    if (kGradA) dA[i] = fmaf(gk, dt, dA[i]);
                    g[i] *= decay;
                }
                gB = channel_sum(gB);
                gAh = channel_sum(gAh);
                const float ddt = fmaf(gAh, kLn2, u * gB);
                ddelta[j] = ddt * sig[r][c];
                du[j] = fmaf(dt, gB, D * dyc);
                dD = fmaf(dyc, u, dD);
                dbias += ddelta[j];
                const float sumB = warp_sum_transposed(dB, lane);
                const float sumC = warp_sum_transposed(dC, lane);
                if ((lane & 2) == 0) {
                    dBC[warp][0][warp_sum_index(lane)][c] = sumB;
                    dBC[warp][1][warp_sum_index(lane)][c] = sumC;
                }
            }
            __syncwarp();  // the pair has read this run's u and dt
            if (my_part() == 0) {
#pragma unroll
                for (int j = 0; j < kSub; ++j) {
                    tile.u[r][s * kSub + j] = du[j];  // read no more: earlier runs read earlier steps
                    tile.dt[r][s * kSub + j] = ddelta[j];
                }
            }
        }
        __syncthreads();
        const Share<T> du_out(p.du, p.du_b, p.du_d, b, d0, t0);
        const Share<T> ddelta_out(p.ddelta, p.ddelta_b, p.ddelta_d, b, d0, t0);
#pragma unroll
        for (int j = 0; j < kShare; ++j) {
            store(du_out, j, tile.u[share_row(j)][share_step()], p, d0, len);
            store(ddelta_out, j, tile.dt[share_row(j)][share_step()], p, d0, len);
        }
        float *partial = p.dBC_partial + (int64_t(blockIdx.x) * p.batch + b) * 2 * kState * p.seqlen;
        for (int i = threadIdx.x; i < 2 * kState * kTile; i += kThreads) {
            const int which = i / (kState * kTile), n = (i / kTile) % kState, cc = i % kTile;
            if (cc >= len) continue;
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) sum += dBC[w][which][n][cc];
            partial[(which * kState + n) * int64_t(p.seqlen) + t0 + cc] = sum;
        }
        __syncthreads();
    }
    if (d >= p.dim) return;
    const int64_t row = int64_t(b) * p.dim + d;
    if (kGradA) {
#pragma unroll
        for (int i = 0; i < kPart; ++i) p.dA_partial[row * kState + n0 + i] = dA[i];
    }
    if (my_part() != 0) return;
    if (p.dD_partial != nullptr) p.dD_partial[row] = dD;
    if (p.ddelta_bias_partial != nullptr) p.ddelta_bias_partial[row] = dbias;
}

template <typename T>
int launch_fwd(const ScanParams &p, cudaStream_t stream) {
    const dim3 grid((p.dim + kChannels - 1) / kChannels, p.batch);
    scan_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
int launch_bwd(const ScanParams &p, cudaStream_t stream) {
    const dim3 grid((p.dim + kChannels - 1) / kChannels, p.batch);
    if (p.dA_partial != nullptr)
        scan_bwd_kernel<T, true><<<grid, kThreads, 0, stream>>>(p);
    else
        scan_bwd_kernel<T, false><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

// `launch` called with a value of the element type p.dtype names.
template <typename Launch>
int by_dtype(const ScanParams &p, Launch launch) {
    switch (p.dtype) {
        case 0: return launch(float{});
        case 1: return launch(__half{});
        case 2: return launch(__nv_bfloat16{});
        default: return int(cudaErrorInvalidValue);
    }
}

}  // namespace

extern "C" {

int mambaft_scan_fwd(const ScanParams *p, cudaStream_t stream) {
    return by_dtype(*p, [&](auto element) { return launch_fwd<decltype(element)>(*p, stream); });
}

int mambaft_scan_bwd(const ScanParams *p, cudaStream_t stream) {
    return by_dtype(*p, [&](auto element) { return launch_bwd<decltype(element)>(*p, stream); });
}

int mambaft_scan_tile() { return kTile; }
int mambaft_scan_block_channels() { return kChannels; }

// Each ScanParams field's offset in declaration order, and sizeof last: the caller checks its copy of the layout.
int mambaft_scan_param_offsets(int64_t *out, int capacity) {
#define OFFSET(field) int64_t(offsetof(ScanParams, field))
    const int64_t offsets[] = {
        OFFSET(batch), OFFSET(dim), OFFSET(seqlen), OFFSET(dtype), OFFSET(u), OFFSET(delta), OFFSET(z), OFFSET(B),
        OFFSET(C), OFFSET(A), OFFSET(D), OFFSET(delta_bias), OFFSET(reset), OFFSET(u_b), OFFSET(u_d),
        OFFSET(delta_b), OFFSET(delta_d), OFFSET(z_b), OFFSET(z_d), OFFSET(B_b), OFFSET(B_n), OFFSET(C_b),
        OFFSET(C_n), OFFSET(y), OFFSET(out_z), OFFSET(y_b), OFFSET(y_d), OFFSET(out_z_b), OFFSET(out_z_d),
        OFFSET(dout), OFFSET(du), OFFSET(ddelta), OFFSET(dz), OFFSET(dout_b), OFFSET(dout_d), OFFSET(du_b),
        OFFSET(du_d), OFFSET(ddelta_b), OFFSET(ddelta_d), OFFSET(dz_b), OFFSET(dz_d), OFFSET(dBC_partial),
        OFFSET(dA_partial), OFFSET(dD_partial), OFFSET(ddelta_bias_partial), OFFSET(checkpoints),
        int64_t(sizeof(ScanParams))};
#undef OFFSET
    const int count = int(sizeof(offsets) / sizeof(offsets[0]));
    for (int i = 0; i < count && i < capacity; ++i) out[i] = offsets[i];
    return count;
}
}
