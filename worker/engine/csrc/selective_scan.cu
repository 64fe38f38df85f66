// Mamba-1's selective scan for training: forward and backward, d_state 16, B and C varying in time (one group),
// softplus(delta + delta_bias) as the step, the D skip and the silu(z) gate fused; resets for packed documents.
//
// Two threads own one channel, 8 of its 16 states each, in registers; a block is 64 channels of one sequence.
// Time goes in tiles of kTile steps: the block stages the tile's u, dt, B and C in shared memory (B and C are read
// from memory once per 64 channels) while the next tile loads, each thread loading runs of 8 steps of a row as
// 16-byte words where the tensors' layout allows, and each thread walks the tile step by step. The backward first
// runs the recurrence forward to keep each tile's entry state (a scratch buffer the caller owns), then walks the
// tiles in reverse: it re-runs the tile to keep a state every kSub steps in shared memory, re-runs each kSub steps
// into registers, and steps back through them. dB and dC are summed over the warp's channels in registers (a
// transposing butterfly, free of selects because each lane holds its states in an order of its own), over the
// block's warps in shared memory, and written once per block to a partial buffer the caller sums: no atomics, the
// same bits every run. dA, dD and d(delta_bias) are computed only when asked for (LoRA freezes them).
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


// This thread's channel within the block and which half of the states it holds. The same pair of threads stages
// the channel's tile rows: the thread of part k the steps k·kRun .. (k+1)·kRun - 1.
__device__ __forceinline__ int my_channel() { return threadIdx.x / 2; }
__device__ __forceinline__ int my_part() { return threadIdx.x % 2; }

// A thread's 8 states are its part's in an order of its own: local state l is the part's state l ^ my_order().
// With lane bits 4, 3 and 2 as the order, the butterfly that sums dB and dC over the warp's channels always keeps
// a lane's low values and sends its high ones (warp_sum_transposed): no selects. The B and C rows are staged in 4
// copies, copy m holding state n at n ^ m, so a lane's two 16-byte reads give its states in its order.
__device__ __forceinline__ int my_order() { return (threadIdx.x >> 2) & 7; }
constexpr int kCopies = 4;
constexpr int kCopyPitch = 352;  // a multiple of the 32 banks, above a copy's kTile rows and the largest shift
static_assert(kCopyPitch % 32 == 0 && kCopyPitch >= kTile * kStatePitch + 20, "copies do not overlap");
// Copy m starts m·kCopyPitch + (0, 4, 16 or 20) floats in: a 16-byte read is served 16 lanes at a time when lanes
// n and n ^ 2 read alike, and the 8 words such a half-warp reads (4 copies x 2 parts, 8 floats apart) then sit in
// distinct banks.
__device__ __forceinline__ int copy_start(int m) { return m * kCopyPitch + (m & 1) * 4 + (m >> 1) * 16; }

constexpr int kRun = kTile * kPart / kState;  // steps of one channel a thread stages
constexpr int kStateRun = 4;  // steps of one row of B or C a thread stages
static_assert(2 * kState * kTile == kThreads * kStateRun, "B and C tiles split evenly over the block");

// What a block keeps of one tile. u and dt (and in the backward dy) are per channel; B and C by step, as copies;
// cut is -inf where a document starts (added to the decay's exponent, it drops the state before), else 0.
struct Tile {
    float u[kChannels][kPitch];
    float dt[kChannels][kPitch];
    alignas(16) float B[kCopies * kCopyPitch];
    alignas(16) float C[kCopies * kCopyPitch];
    float cut[kTile];
};

// This thread's 8 values of a step's row of B or C, in its order.
__device__ __forceinline__ void read_part(float (&v)[kPart], const float (&copies)[kCopies * kCopyPitch], int c) {
    const int order = my_order();
    const float4 *words =
        reinterpret_cast<const float4 *>(copies + copy_start(order & 3) + c * kStatePitch + my_part() * kPart);
    const float4 lo = words[order >> 2], hi = words[(order >> 2) ^ 1];
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}

// Whether every tensor the kernel reads or writes allows 16-byte accesses to a thread's runs.
template <typename T>
__device__ __forceinline__ bool runs_aligned(const ScanParams &p) {
    uintptr_t bits = 0;
    for (const void *ptr : {p.u, p.delta, p.z, p.B, p.C, static_cast<const void *>(p.y),
                            static_cast<const void *>(p.out_z), p.dout, static_cast<const void *>(p.du),
                            static_cast<const void *>(p.ddelta), static_cast<const void *>(p.dz)})
        bits |= reinterpret_cast<uintptr_t>(ptr);
    for (const int64_t stride : {p.u_b, p.u_d, p.delta_b, p.delta_d, p.z_b, p.z_d, p.B_b, p.B_n, p.C_b, p.C_n, p.y_b,
                                 p.y_d, p.out_z_b, p.out_z_d, p.dout_b, p.dout_d, p.du_b, p.du_d, p.ddelta_b,
                                 p.ddelta_d, p.dz_b, p.dz_d})
        bits |= uintptr_t(stride * int64_t(sizeof(T)));
    return (bits & 15) == 0;
}

// `count` elements from `at` into v, zeros after them: in 16- or 8-byte words when all N are there and aligned.
template <typename T, int N>
__device__ __forceinline__ void load_run(T (&v)[N], const T *at, int count, bool aligned) {
    constexpr int kBytes = N * int(sizeof(T));
    if (aligned && count == N) {
        if constexpr (kBytes % 16 == 0) {
#pragma unroll
            for (int k = 0; k < kBytes / 16; ++k)
                reinterpret_cast<uint4 *>(v)[k] = reinterpret_cast<const uint4 *>(at)[k];
            return;
        } else if constexpr (kBytes == 8) {
            *reinterpret_cast<uint2 *>(v) = *reinterpret_cast<const uint2 *>(at);
            return;
        }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = i < count ? at[i] : from_float<T>(0.f);
}

// The first `count` of v to `at`.
template <typename T>
__device__ __forceinline__ void store_run(T *at, const float (&v)[kRun], int count, bool aligned) {
    alignas(16) T w[kRun];
#pragma unroll
    for (int i = 0; i < kRun; ++i) w[i] = from_float<T>(v[i]);
    if (aligned && count == kRun) {
#pragma unroll
        for (int k = 0; k < kRun * int(sizeof(T)) / 16; ++k)
            reinterpret_cast<uint4 *>(at)[k] = reinterpret_cast<const uint4 *>(w)[k];
        return;
    }
#pragma unroll
    for (int i = 0; i < kRun; ++i)
        if (i < count) at[i] = w[i];
}

// One (batch, dim, seqlen) tensor: where it starts and its batch and channel strides.
struct Rows {
    const void *base;
    int64_t b_stride, d_stride;
};

// Where this thread's run of `rows` starts in the tile at t0, and how many of its steps are inside the tensor
// (fewer in a last, short tile; none past dim).
template <typename T>
__device__ __forceinline__ T *run_at(Rows rows, int b, int d, int t0) {
    return const_cast<T *>(static_cast<const T *>(rows.base)) + b * rows.b_stride + int64_t(d) * rows.d_stride + t0 +
           my_part() * kRun;
}

__device__ __forceinline__ int run_count(const ScanParams &p, int d, int len) {
    return d < p.dim ? max(0, min(kRun, len - my_part() * kRun)) : 0;
}

template <typename T>
__device__ __forceinline__ void fetch(T (&v)[kRun], Rows rows, const ScanParams &p, int b, int d, int t0, int len,
                                      bool aligned) {
    load_run<T, kRun>(v, run_at<T>(rows, b, d, t0), run_count(p, d, len), aligned);
}

template <typename T>
__device__ __forceinline__ void store(Rows rows, const float (&v)[kRun], const ScanParams &p, int b, int d, int t0,
                                      int len, bool aligned) {
    store_run<T>(run_at<T>(rows, b, d, t0), v, run_count(p, d, len), aligned);
}

// The inputs of one tile of the recurrence, as loaded, before they are staged: this thread's runs of u and delta,
// one run of a row of B (threads of the block's first half) or C (second half), and a step's reset flag.
template <typename T>
struct Fetched {
    T u[kRun], delta[kRun], BC[kStateRun];
    bool reset;
};

// The row of B or C, and the steps, of this thread's run of them.
__device__ __forceinline__ int state_row() { return threadIdx.x % kState; }
__device__ __forceinline__ int state_run_step() { return (threadIdx.x / kState) % (kTile / kStateRun) * kStateRun; }
__device__ __forceinline__ bool stages_C() { return threadIdx.x >= kThreads / 2; }

template <typename T>
__device__ __forceinline__ void fetch_inputs(Fetched<T> &f, const ScanParams &p, int b, int d, int t0, int len,
                                             bool aligned) {
    fetch<T>(f.u, {p.u, p.u_b, p.u_d}, p, b, d, t0, len, aligned);
    fetch<T>(f.delta, {p.delta, p.delta_b, p.delta_d}, p, b, d, t0, len, aligned);
    const int c = state_run_step();
    const T *BC = stages_C() ? static_cast<const T *>(p.C) + b * p.C_b + state_row() * p.C_n
                             : static_cast<const T *>(p.B) + b * p.B_b + state_row() * p.B_n;
    load_run<T, kStateRun>(f.BC, BC + t0 + c, max(0, min(kStateRun, len - c)), aligned);
    const int step = threadIdx.x;
    f.reset = p.reset != nullptr && step < len && p.reset[int64_t(b) * p.seqlen + t0 + step];
}

// Steps past the tile's length (and channels past dim) stage as zero input with dt 0: the state passes unchanged,
// so a thread may run a whole tile.
// `sig`, if given, gets softplus' derivative, sigmoid(delta + bias), which the backward needs.
template <typename T>
__device__ __forceinline__ void stage_inputs(Tile &tile, const Fetched<T> &f, float bias, const ScanParams &p, int d,
                                             int len, float (*sig)[kPitch] = nullptr) {
    const int r = my_channel(), c0 = my_part() * kRun, count = run_count(p, d, len);
#pragma unroll
    for (int i = 0; i < kRun; ++i) {
        // softplus: log(1 + e^x), two fast intrinsics computed for every x (a select, not a branch); below x = -16
        // it is 0 where the true value is under 1e-7
        const float x = to_float(f.delta[i]) + bias, e = __expf(x), softplus = __logf(1.f + e);
        const bool large = x > 20.f;
        tile.u[r][c0 + i] = to_float(f.u[i]);
        tile.dt[r][c0 + i] = i < count ? (large ? x : softplus) : 0.f;
        if (sig != nullptr) sig[r][c0 + i] = large ? 1.f : __fdividef(e, 1.f + e);
    }
    float(&copies)[kCopies * kCopyPitch] = stages_C() ? tile.C : tile.B;
    const int n = state_row(), c = state_run_step();
#pragma unroll
    for (int i = 0; i < kStateRun; ++i) {
        const float v = to_float(f.BC[i]);
#pragma unroll
        for (int m = 0; m < kCopies; ++m) copies[copy_start(m) + (c + i) * kStatePitch + (n ^ m)] = v;
    }
    if (threadIdx.x < kTile) tile.cut[threadIdx.x] = f.reset ? -INFINITY : 0.f;
}

// One step of the recurrence for this thread's states: h <- exp(dt A) h + dt u B_c.
__device__ __forceinline__ void advance(float (&h)[kPart], const float (&A2)[kPart], const Tile &tile, int c) {
    const int r = my_channel();
    const float dt = tile.dt[r][c], dtu = dt * tile.u[r][c], cut = tile.cut[c];
    float B[kPart];
    read_part(B, tile.B, c);
#pragma unroll
    for (int i = 0; i < kPart; ++i) h[i] = fmaf(exp2f(fmaf(dt, A2[i], cut)), h[i], dtu * B[i]);
}

// The part's state this thread holds as local state i.
__device__ __forceinline__ int state_of(int i) { return my_part() * kPart + (i ^ my_order()); }

// A is read pre-multiplied by log2(e), so each decay is one exp2.
__device__ __forceinline__ void load_A(float (&A2)[kPart], const ScanParams &p, int d) {
#pragma unroll
    for (int i = 0; i < kPart; ++i) A2[i] = d < p.dim ? p.A[int64_t(d) * kState + state_of(i)] * kLog2e : 0.f;
}

__device__ __forceinline__ float load_bias(const ScanParams &p, int d) {
    return (p.delta_bias != nullptr && d < p.dim) ? p.delta_bias[d] : 0.f;
}

// The sum over the channel's two threads, which sit in adjacent lanes.
__device__ __forceinline__ float channel_sum(float x) { return x + __shfl_xor_sync(0xffffffffu, x, 1); }

template <typename T>
__global__ __launch_bounds__(kThreads, kBlocksPerSM) void scan_fwd_kernel(ScanParams p) {
    __shared__ Tile tile;
    const int b = blockIdx.y, r = my_channel(), d = blockIdx.x * kChannels + r, c0 = my_part() * kRun;
    const bool aligned = runs_aligned<T>(p);
    float A2[kPart], h[kPart];
    load_A(A2, p, d);
#pragma unroll
    for (int i = 0; i < kPart; ++i) h[i] = 0.f;
    const float D = (p.D != nullptr && d < p.dim) ? p.D[d] : 0.f, bias = load_bias(p, d);
    // The next tile's inputs load while this one runs.
    Fetched<T> next;
    T z[kRun];
    fetch_inputs<T>(next, p, b, d, 0, min(kTile, p.seqlen), aligned);
    fetch<T>(z, {p.z, p.z_b, p.z_d}, p, b, d, 0, min(kTile, p.seqlen), aligned);
    for (int t0 = 0; t0 < p.seqlen; t0 += kTile) {
        const int len = min(kTile, p.seqlen - t0);
        stage_inputs<T>(tile, next, bias, p, d, len);
        float gate[kRun];  // silu(z) of this thread's run
#pragma unroll
        for (int i = 0; i < kRun; ++i) gate[i] = to_float(z[i]) * sigmoid(to_float(z[i]));
        __syncthreads();
        if (t0 + kTile < p.seqlen) {
            const int next_len = min(kTile, p.seqlen - t0 - kTile);
            fetch_inputs<T>(next, p, b, d, t0 + kTile, next_len, aligned);
            fetch<T>(z, {p.z, p.z_b, p.z_d}, p, b, d, t0 + kTile, next_len, aligned);
        }
#pragma unroll
        for (int c = 0; c < kTile; ++c) {
            advance(h, A2, tile, c);
            float y = 0.f, C[kPart];
            read_part(C, tile.C, c);
#pragma unroll
            for (int i = 0; i < kPart; ++i) y = fmaf(h[i], C[i], y);
            // The shuffle waits for the partner's y, which needed its read of u: u can be overwritten.
            y = channel_sum(y);
            if (my_part() == 0) tile.u[r][c] = fmaf(D, tile.u[r][c], y);
        }
        __syncthreads();
        float y[kRun], out[kRun];
#pragma unroll
        for (int i = 0; i < kRun; ++i) {
            y[i] = tile.u[r][c0 + i];
            out[i] = y[i] * gate[i];
        }
        store<T>({p.y, p.y_b, p.y_d}, y, p, b, d, t0, len, aligned);
        store<T>({p.out_z, p.out_z_b, p.out_z_d}, out, p, b, d, t0, len, aligned);
        __syncthreads();
    }
}

// One halving step of warp_sum_transposed: each lane keeps the low half of its values, adding the high half of
// its partner's, which holds the same states there (the partner's order differs in the bit `kOffset` stands for).
template <int kHalf, int kOffset>
__device__ __forceinline__ void trade_halves(float (&v)[kPart]) {
#pragma unroll
    for (int i = 0; i < kHalf; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i + kHalf], kOffset);
}

// Sum each of v's 8 values over the warp's 16 channels (lanes of the same part, bit 0): 4 + 2 + 1 shuffles trade
// halves, one more sums the last pair. The sum of the part's state my_order() ends in every lane.
__device__ __forceinline__ float warp_sum_transposed(float (&v)[kPart]) {
    trade_halves<4, 16>(v);
    trade_halves<2, 8>(v);
    trade_halves<1, 4>(v);
    return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 2);
}

// What a block of the backward keeps besides the tile: more than a kernel may declare statically, so it is
// dynamic shared memory.
struct BwdShared {
    Tile tile;
    float dy[kChannels][kPitch];  // dout * silu(z)
    float sig[kChannels][kPitch];  // sigmoid(delta + bias)
    float states[kSubs][kPart][kThreads];  // each thread's states before every kSub-th step of the tile
    float dBC[kWarps][2][kState][kPitch];  // per warp: dB, dC; the odd pitch keeps a step's 16 states on 16 banks
};

template <typename T, bool kGradA>
__global__ __launch_bounds__(kThreads, kBlocksPerSM) void scan_bwd_kernel(ScanParams p) {
    extern __shared__ float4 shared_words[];
    BwdShared &shared = *reinterpret_cast<BwdShared *>(shared_words);
    Tile &tile = shared.tile;
    auto &dy = shared.dy;
    auto &sig = shared.sig;
    auto &states = shared.states;
    auto &dBC = shared.dBC;
    const int b = blockIdx.y, r = my_channel(), d = blockIdx.x * kChannels + r, c0 = my_part() * kRun;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int tiles = (p.seqlen + kTile - 1) / kTile;
    const bool aligned = runs_aligned<T>(p);
    float A2[kPart];
    load_A(A2, p, d);
    const float D = (p.D != nullptr && d < p.dim) ? p.D[d] : 0.f, bias = load_bias(p, d);
    // This thread's entry states of each tile, in its order.
    float *checkpoints = p.checkpoints + (int64_t(b) * p.dim + min(d, p.dim - 1)) * tiles * kState + my_part() * kPart;

    // Pass 1: each tile's entry state; the next tile's inputs load while this one runs.
    {
        float h[kPart];
#pragma unroll
        for (int i = 0; i < kPart; ++i) h[i] = 0.f;
        Fetched<T> next;
        if (tiles > 1) fetch_inputs<T>(next, p, b, d, 0, kTile, aligned);
        for (int k = 0; k < tiles; ++k) {
            if (d < p.dim) {
#pragma unroll
                for (int i = 0; i < kPart; i += 4)
                    *reinterpret_cast<float4 *>(checkpoints + k * kState + i) =
                        make_float4(h[i], h[i + 1], h[i + 2], h[i + 3]);
            }
            if (k == tiles - 1) break;
            stage_inputs<T>(tile, next, bias, p, d, kTile);
            __syncthreads();
            if (k + 2 < tiles) fetch_inputs<T>(next, p, b, d, (k + 1) * kTile, kTile, aligned);
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
            T z[kRun], dout[kRun], y[kRun];
            fetch_inputs<T>(in, p, b, d, t0, len, aligned);
            fetch<T>(z, {p.z, p.z_b, p.z_d}, p, b, d, t0, len, aligned);
            fetch<T>(dout, {p.dout, p.dout_b, p.dout_d}, p, b, d, t0, len, aligned);
            fetch<T>(y, {p.y, p.y_b, p.y_d}, p, b, d, t0, len, aligned);
            stage_inputs<T>(tile, in, bias, p, d, len, sig);
            float dz[kRun], out[kRun];
#pragma unroll
            for (int i = 0; i < kRun; ++i) {
                const float zf = to_float(z[i]), s = sigmoid(zf), dof = to_float(dout[i]), yf = to_float(y[i]);
                dy[r][c0 + i] = dof * zf * s;
                dz[i] = dof * yf * s * (1.f + zf * (1.f - s));
                out[i] = yf * zf * s;
            }
            store<T>({p.dz, p.dz_b, p.dz_d}, dz, p, b, d, t0, len, aligned);
            if (p.out_z != nullptr) store<T>({p.out_z, p.out_z_b, p.out_z_d}, out, p, b, d, t0, len, aligned);
        }
        __syncthreads();
        {
            float h[kPart];
            const float4 *entry = reinterpret_cast<const float4 *>(checkpoints + k * kState);
#pragma unroll
            for (int i = 0; i < kPart; i += 4) {
                const float4 w = d < p.dim ? entry[i / 4] : make_float4(0.f, 0.f, 0.f, 0.f);
                h[i] = w.x, h[i + 1] = w.y, h[i + 2] = w.z, h[i + 3] = w.w;
            }
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
                read_part(B, tile.B, c);
                read_part(C, tile.C, c);
#pragma unroll
                for (int i = 0; i < kPart; ++i) {
                    const float decay = exp2f(fmaf(dt, A2[i], cut));
                    // The state after the step: the re-run's, but for the run's last step.
                    const float after = j + 1 < kSub ? before[j + 1][i] : fmaf(decay, before[j][i], dtu * B[i]);
                    dC[i] = dyc * after;
                    g[i] = fmaf(C[i], dyc, g[i]);
                    dB[i] = g[i] * dtu;
                    gB = fmaf(g[i], B[i], gB);
                    g[i] *= decay;
                    // g·(decay·h): what the decay's exponent, dt·A, passes back
                    const float gk = g[i] * before[j][i];
                    gAh = fmaf(gk, A2[i], gAh);
                    if (kGradA) dA[i] = fmaf(gk, dt, dA[i]);
                }
                gB = channel_sum(gB);
                gAh = channel_sum(gAh);
                const float ddt = fmaf(gAh, kLn2, u * gB);
                ddelta[j] = ddt * sig[r][c];
                du[j] = fmaf(dt, gB, D * dyc);
                dD = fmaf(dyc, u, dD);
                dbias += ddelta[j];
                const float sumB = warp_sum_transposed(dB);
                const float sumC = warp_sum_transposed(dC);
                if ((lane & 2) == 0) {
                    const int n = state_of(0);
                    dBC[warp][0][n][c] = sumB;
                    dBC[warp][1][n][c] = sumC;
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
        float du[kRun], ddelta[kRun];
#pragma unroll
        for (int i = 0; i < kRun; ++i) {
            du[i] = tile.u[r][c0 + i];
            ddelta[i] = tile.dt[r][c0 + i];
        }
        store<T>({p.du, p.du_b, p.du_d}, du, p, b, d, t0, len, aligned);
        store<T>({p.ddelta, p.ddelta_b, p.ddelta_d}, ddelta, p, b, d, t0, len, aligned);
        // The block's dB and dC of the tile, (2 x 16 rows) x kTile steps: this thread's step of every
        // (kThreads / kTile)-th row.
        constexpr int kRowsPerPass = kThreads / kTile;
        const int row0 = threadIdx.x / kTile, cc = threadIdx.x % kTile;
        float *partial = p.dBC_partial + (int64_t(blockIdx.x) * p.batch + b) * 2 * kState * p.seqlen +
                         row0 * int64_t(p.seqlen) + t0 + cc;
#pragma unroll
        for (int j = 0; j < 2 * kState / kRowsPerPass; ++j) {
            const int row = row0 + j * kRowsPerPass;
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) sum += dBC[w][row / kState][row % kState][cc];
            if (cc < len) partial[j * kRowsPerPass * int64_t(p.seqlen)] = sum;
        }
        __syncthreads();
    }
    if (d >= p.dim) return;
    const int64_t row = int64_t(b) * p.dim + d;
    if (kGradA) {
#pragma unroll
        for (int i = 0; i < kPart; ++i) p.dA_partial[row * kState + state_of(i)] = dA[i];
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

// The backward with its dynamic shared memory, allowed once per kernel (the attributes are not stream operations;
// the first call comes before any CUDA graph captures); shared memory is preferred to L1 so 4 blocks fit an SM.
template <typename T, bool kGradA>
int launch_bwd_kernel(dim3 grid, const ScanParams &p, cudaStream_t stream) {
    static const cudaError_t allowed = [] {
        const cudaError_t size = cudaFuncSetAttribute(
            scan_bwd_kernel<T, kGradA>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sizeof(BwdShared)));
        if (size != cudaSuccess) return size;
        return cudaFuncSetAttribute(scan_bwd_kernel<T, kGradA>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    int(cudaSharedmemCarveoutMaxShared));
    }();
    if (allowed != cudaSuccess) return int(allowed);
    scan_bwd_kernel<T, kGradA><<<grid, kThreads, sizeof(BwdShared), stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
int launch_bwd(const ScanParams &p, cudaStream_t stream) {
    const dim3 grid((p.dim + kChannels - 1) / kChannels, p.batch);
    if (p.dA_partial != nullptr) return launch_bwd_kernel<T, true>(grid, p, stream);
    return launch_bwd_kernel<T, false>(grid, p, stream);
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
