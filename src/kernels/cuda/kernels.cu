// actionclip's fused CUDA kernels (compiled to PTX by build.rs under the `cuda` feature).
//
// - attention_fwd_* / attention_bwd_*: flash-style multi-head attention read straight from the fused in_proj output
//   qkv [N, L, 3, H, HD] (bf16/f16, f32 accumulation, tensor-core mma.sync m16n8k16, online softmax,
//   K/V tiles double-buffered with cp.async); the in_proj bias is folded in (q + b_q on load, b_k dropped
//   since it shifts every score of a row equally, b_v added to the output since each row of P sums to 1).
// - residual_layer_norm_*: s = x + d + d_bias (optional) and y = LayerNorm(s) (optional) in one pass.
// - layer_norm_bwd_dx_* / layer_norm_bwd_params_*: LayerNorm backward (input gradient; per-block partial
//   sums of the weight and bias gradients).
// - bias_quick_gelu_fwd_* / bias_quick_gelu_bwd_*: y = QuickGELU(x + b) and its input gradient.
// - bias_add_*: y = x + b (b broadcast over rows); column_sum_*: per-block f32 column sums (bias gradients).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------------
// Scalar and vector helpers
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }

// Rounds through T (what storing and re-loading a value of type T does).
template <typename T> __device__ __forceinline__ float round_to(float v) { return to_f(from_f<T>(v)); }

// Eight consecutive elements as one 16-byte (half types) or two 16-byte (f32) accesses; `p` is aligned.
template <typename T> __device__ __forceinline__ void load8(const T* p, float* out) {
    if constexpr (sizeof(T) == 4) {
        const float4 a = reinterpret_cast<const float4*>(p)[0];
        const float4 b = reinterpret_cast<const float4*>(p)[1];
        out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
        out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
    } else {
        const uint4 raw = *reinterpret_cast<const uint4*>(p);
        const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < 8; ++j) out[j] = to_f(v[j]);
    }
}

template <typename T> __device__ __forceinline__ void store8(T* p, const float* in) {
    if constexpr (sizeof(T) == 4) {
        reinterpret_cast<float4*>(p)[0] = make_float4(in[0], in[1], in[2], in[3]);
        reinterpret_cast<float4*>(p)[1] = make_float4(in[4], in[5], in[6], in[7]);
    } else {
        uint4 raw;
        T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = from_f<T>(in[j]);
        *reinterpret_cast<uint4*>(p) = raw;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---------------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------------
// Two values packed as the low/high halves of a 32-bit mma operand register.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// c (16x8 f32) += a (16x16, row-major) * b (16x8, column-major).
template <typename T> __device__ __forceinline__ void mma16816(float* c, const uint32_t* a, const uint32_t* b);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// 16-byte global -> shared copy; `valid = false` writes zeros instead (rows past the sequence end).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Fragment loads for mma16816 from shared tiles with row stride `ld` (g = lane / 4, tig = lane % 4).
// A operand: rows row0..row0+15, columns col0..col0+15 of the tile.
template <typename T> __device__ __forceinline__ void load_a(const T* s, int ld, int row0, int col0, uint32_t* a) {
    const int lane = threadIdx.x % 32;
    const T* p = s + (row0 + lane / 4) * ld + col0 + (lane % 4) * 2;
    a[0] = *reinterpret_cast<const uint32_t*>(p);
    a[1] = *reinterpret_cast<const uint32_t*>(p + 8 * ld);
    a[2] = *reinterpret_cast<const uint32_t*>(p + 8);
    a[3] = *reinterpret_cast<const uint32_t*>(p + 8 * ld + 8);
}

// A operand of the transposed tile: A(r, k) = s[col0 + k][row0 + r] (16-bit gathers).
__device__ __forceinline__ void load_a_trans(const uint16_t* s, int ld, int row0, int col0, uint32_t* a) {
    const int lane = threadIdx.x % 32, r = row0 + lane / 4, k = col0 + (lane % 4) * 2;
    a[0] = (uint32_t)s[k * ld + r] | ((uint32_t)s[(k + 1) * ld + r] << 16);
    a[1] = (uint32_t)s[k * ld + r + 8] | ((uint32_t)s[(k + 1) * ld + r + 8] << 16);
    a[2] = (uint32_t)s[(k + 8) * ld + r] | ((uint32_t)s[(k + 9) * ld + r] << 16);
    a[3] = (uint32_t)s[(k + 8) * ld + r + 8] | ((uint32_t)s[(k + 9) * ld + r + 8] << 16);
}

// B operand (k x n = 16 x 8) whose column n is row n0 + n of the tile, k running along it from k0.
template <typename T> __device__ __forceinline__ void load_b_rows(const T* s, int ld, int n0, int k0, uint32_t* b) {
    const int lane = threadIdx.x % 32;
    const T* p = s + (n0 + lane / 4) * ld + k0 + (lane % 4) * 2;
    b[0] = *reinterpret_cast<const uint32_t*>(p);
    b[1] = *reinterpret_cast<const uint32_t*>(p + 8);
}

// B operand (k x n = 16 x 8) that is the tile itself: rows k0..k0+15, columns n0..n0+7 (16-bit gathers).
__device__ __forceinline__ void load_b_cols(const uint16_t* s, int ld, int k0, int n0, uint32_t* b) {
    const int lane = threadIdx.x % 32, k = k0 + (lane % 4) * 2, n = n0 + lane / 4;
    b[0] = (uint32_t)s[k * ld + n] | ((uint32_t)s[(k + 1) * ld + n] << 16);
    b[1] = (uint32_t)s[(k + 8) * ld + n] | ((uint32_t)s[(k + 9) * ld + n] << 16);
}

// acc (16 x 8*NT) = A (16 x 16*KS, fragments af) times B, B's column j*8 + n being row j*8 + n of the tile.
template <typename T, int NT, int KS>
__device__ __forceinline__ void mma_by_rows(float (*acc)[4], const uint32_t (*af)[4], const T* s, int ld) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            uint32_t b[2];
            load_b_rows(s, ld, j * 8, ks * 16, b);
            mma16816<T>(acc[j], af[ks], b);
        }
    }
}

// out (16 x 8*ND) += A (16 x 16*KK, held as accumulator tiles `in`, rounded to T) times the tile's rows
// 0..16*KK, columns 0..8*ND. An accumulator's layout is the A operand's: tiles 2kk and 2kk+1 make k-step kk.
template <typename T, int KK, int ND>
__device__ __forceinline__ void mma_acc_by_tile(float (*out)[4], const float (*in)[4], const uint16_t* s, int ld) {
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) {
        const uint32_t a[4] = {pack2<T>(in[2 * kk][0], in[2 * kk][1]), pack2<T>(in[2 * kk][2], in[2 * kk][3]),
                               pack2<T>(in[2 * kk + 1][0], in[2 * kk + 1][1]),
                               pack2<T>(in[2 * kk + 1][2], in[2 * kk + 1][3])};
#pragma unroll
        for (int j = 0; j < ND; ++j) {
            uint32_t b[2];
            load_b_cols(s, ld, kk * 16, j * 8, b);
            mma16816<T>(out[j], a, b);
        }
    }
}

// Eight values of q + b_q (head h, columns c..c+7) of query `row` into v, zeros past the sequence end;
// q_g points at the head's q of token 0 and `tok` is the token stride of qkv.
template <typename T>
__device__ __forceinline__ void load_q8(const T* q_g, const T* bias, long tok, int row, int L, int bias_off, float* v) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.f;
    if (row >= L) return;
    load8(q_g + (long)row * tok, v);
    if (bias) {
        float b[8];
        load8(bias + bias_off, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] += b[j];
    }
}

// One block: 64 query rows of one (sequence, head), 4 warps of 16 rows each; keys in tiles of BN.
// qkv [N, L, 3, H, HD]; bias [3, H, HD] or null; out [N, L, H, HD].
// lse (optional, [N, H, L] f32): each row's log2-sum-exp2 of its scaled scores, for the backward pass.
template <typename T, int HD, int BN, int STAGES>
__device__ __forceinline__ void attention_fwd(const T* __restrict__ qkv, const T* __restrict__ bias, T* __restrict__ out,
                                              float* __restrict__ lse, int L, int H, float scale_log2, int causal) {
    constexpr int BM = 64, LD = HD + 8, CH = HD / 8;
    __shared__ __align__(16) T q_s[BM * LD];
    __shared__ __align__(16) T k_s[STAGES][BN * LD];
    __shared__ __align__(16) T v_s[STAGES][BN * LD];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tig = lane % 4;
    const int m0 = blockIdx.x * BM;
    const int n = blockIdx.y / H, h = blockIdx.y % H;
    const long tok = 3L * H * HD;
    const T* q_g = qkv + (long)n * L * tok + (long)h * HD;
    const T* k_g = q_g + (long)H * HD;
    const T* v_g = q_g + 2L * H * HD;

    int tiles = (L + BN - 1) / BN;
    if (causal) tiles = min(tiles, (min(m0 + BM, L) + BN - 1) / BN);

    auto load_kv = [&](int tile, int stage) {
        const int k0 = tile * BN;
        for (int i = tid; i < BN * CH; i += 128) {
            const int r = i / CH, c = (i % CH) * 8;
            const bool ok = k0 + r < L;
            const long off = (long)(ok ? k0 + r : 0) * tok + c;
            cp_async16(&k_s[stage][r * LD + c], k_g + off, ok);
            cp_async16(&v_s[stage][r * LD + c], v_g + off, ok);
        }
        cp_async_commit();
    };
    load_kv(0, 0);

    // Q tile (+ b_q), rows past L zero.
    for (int i = tid; i < BM * CH; i += 128) {
        const int r = i / CH, c = (i % CH) * 8;
        float v[8];
        load_q8(q_g + c, bias, tok, m0 + r, L, h * HD + c, v);
        store8(&q_s[r * LD + c], v);
    }
    __syncthreads();

    const int qr = warp * 16;
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) load_a(q_s, LD, qr, ks * 16, qf[ks]);

    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    const int row0 = m0 + qr + g;  // this thread's rows: row0 and row0 + 8

    for (int t = 0; t < tiles; ++t) {
        const int stage = STAGES == 2 ? (t & 1) : 0;
        if (STAGES == 1 && t > 0) load_kv(t, 0);  // single buffer: the previous tile is done (barrier below)
        if (STAGES == 2 && t + 1 < tiles) {
            load_kv(t + 1, (t + 1) & 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T* ks_ = k_s[stage];
        const uint16_t* vs_ = reinterpret_cast<const uint16_t*>(v_s[stage]);

        // S = Q K^T for 16 rows x BN keys.
        float s[BN / 8][4];
        mma_by_rows<T, BN / 8, HD / 16>(s, qf, ks_, LD);
        // Scale (log2 domain), mask keys past L and, when causal, after the query.
        const int k0 = t * BN;
        float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + j * 8 + tig * 2 + (e & 1);
                const int row = row0 + (e >> 1) * 8;
                const bool ok = key < L && (!causal || key <= row);
                s[j][e] = ok ? s[j][e] * scale_log2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
            }
        }
        float alpha[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
            alpha[r] = exp2f(m_run[r] - base[r]);
            m_run[r] = mx[r];
            l_run[r] *= alpha[r];
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = exp2f(s[j][e] - base[e >> 1]);
                l_run[e >> 1] += s[j][e];
            }
        }
#pragma unroll
        for (int j = 0; j < HD / 8; ++j) {
            o[j][0] *= alpha[0]; o[j][1] *= alpha[0];
            o[j][2] *= alpha[1]; o[j][3] *= alpha[1];
        }
        // O += P V.
        mma_acc_by_tile<T, BN / 16, HD / 8>(o, s, vs_, LD);
        __syncthreads();
    }

    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
        inv[r] = 1.f / l_run[r];
        const int row = row0 + r * 8;
        if (lse && tig == 0 && row < L) lse[((long)n * H + h) * L + row] = m_run[r] + log2f(l_run[r]);
    }
    const long out_tok = (long)H * HD;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) {
        const int d = j * 8 + tig * 2;
        float bv0 = 0.f, bv1 = 0.f;
        if (bias) {
            bv0 = to_f(bias[2 * H * HD + h * HD + d]);
            bv1 = to_f(bias[2 * H * HD + h * HD + d + 1]);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + r * 8;
            if (row < L) {
                T* dst = out + ((long)n * L + row) * out_tok + h * HD + d;
                *reinterpret_cast<uint32_t*>(dst) = pack2<T>(o[j][2 * r] * inv[r] + bv0, o[j][2 * r + 1] * inv[r] + bv1);
            }
        }
    }
}

#define ATTENTION(NAME, T, HD, BN, STAGES)                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                     \
        NAME(const T* qkv, const T* bias, T* out, float* lse, int L, int H, float scale_log2, int causal) { \
        attention_fwd<T, HD, BN, STAGES>(qkv, bias, out, lse, L, H, scale_log2, causal);                    \
    }
ATTENTION(attention_fwd_bf16_hd64, __nv_bfloat16, 64, 64, 2)
ATTENTION(attention_fwd_f16_hd64, __half, 64, 64, 2)
ATTENTION(attention_fwd_bf16_hd128, __nv_bfloat16, 128, 32, 1)
ATTENTION(attention_fwd_f16_hd128, __half, 128, 32, 1)

// ---------------------------------------------------------------------------------------------------
// Attention backward (head dim 64): FlashAttention-2 style, parallel over key blocks
// ---------------------------------------------------------------------------------------------------
// The biases: b_k shifts every score of a row equally, so P, dQ and dK ignore it and its gradient is 0;
// b_v adds the same vector to every row of O, so dP and delta use O - b_v and its gradient is the
// column sum of dO; b_q enters through q + b_q and its gradient is the column sum of dQ.

// delta[n, h, l] = dO[n, l, h, :] . (O[n, l, h, :] - b_v[h, :]); one warp per (token, head).
template <typename T>
__device__ __forceinline__ void attention_bwd_delta(const T* __restrict__ out, const T* __restrict__ dout,
                                                    const T* __restrict__ bias, float* __restrict__ delta, int tokens,
                                                    int L, int H, int HD) {
    const long w = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (w >= (long)tokens * H) return;
    const long t = w / H;
    const int h = (int)(w % H);
    const long off = t * H * HD + (long)h * HD;
    float s = 0.f;
    for (int d = lane; d < HD; d += 32) {
        const float bv = bias ? to_f(bias[2 * H * HD + h * HD + d]) : 0.f;
        s += to_f(dout[off + d]) * (to_f(out[off + d]) - bv);
    }
    s = warp_sum(s);
    if (lane == 0) delta[((t / L) * H + h) * L + t % L] = s;
}

// One block: 64 keys of one (sequence, head), 4 warps of 16 keys; loops over query tiles of 64.
// Writes dK and dV into dqkv [N, L, 3, H, HD] and adds scale * dQ into dq [N, L, H, HD] f32 (atomics).
template <typename T, int HD>
__device__ __forceinline__ void attention_bwd(const T* __restrict__ qkv, const T* __restrict__ bias,
                                              const T* __restrict__ dout, const float* __restrict__ lse,
                                              const float* __restrict__ delta, T* __restrict__ dqkv,
                                              float* __restrict__ dq, int L, int H, float scale_log2, float scale,
                                              int causal) {
    constexpr int BN = 64, BM = 64, LD = HD + 8, LDS = BM + 8, CH = HD / 8;
    __shared__ __align__(16) T k_s[BN * LD];
    __shared__ __align__(16) T v_s[BN * LD];
    __shared__ __align__(16) T q_s[BM * LD];
    __shared__ __align__(16) T do_s[BM * LD];
    __shared__ __align__(16) T ds_s[BN * LDS];  // dS^T: [key][query]
    __shared__ float lse_s[BM], delta_s[BM];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tig = lane % 4;
    const int n0 = blockIdx.x * BN;
    const int n = blockIdx.y / H, h = blockIdx.y % H;
    const long tok = 3L * H * HD, out_tok = (long)H * HD;
    const T* q_g = qkv + (long)n * L * tok + (long)h * HD;
    const T* k_g = q_g + (long)H * HD;
    const T* v_g = q_g + 2L * H * HD;
    const T* do_g = dout + (long)n * L * out_tok + (long)h * HD;
    const float* lse_g = lse + ((long)n * H + h) * L;
    const float* delta_g = delta + ((long)n * H + h) * L;
    const uint16_t* k16 = reinterpret_cast<const uint16_t*>(k_s);
    const uint16_t* q16 = reinterpret_cast<const uint16_t*>(q_s);
    const uint16_t* do16 = reinterpret_cast<const uint16_t*>(do_s);
    const uint16_t* ds16 = reinterpret_cast<const uint16_t*>(ds_s);

    for (int i = tid; i < BN * CH; i += 128) {
        const int r = i / CH, c = (i % CH) * 8;
        float kv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, vv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (n0 + r < L) {
            load8(k_g + (long)(n0 + r) * tok + c, kv);
            load8(v_g + (long)(n0 + r) * tok + c, vv);
        }
        store8(&k_s[r * LD + c], kv);
        store8(&v_s[r * LD + c], vv);
    }
    __syncthreads();

    const int kr = warp * 16;  // this warp's keys: n0 + kr + g and + 8
    uint32_t kf[HD / 16][4], vf[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
        load_a(k_s, LD, kr, ks * 16, kf[ks]);
        load_a(v_s, LD, kr, ks * 16, vf[ks]);
    }
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
        for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.f;

    for (int m0 = causal ? (n0 / BM) * BM : 0; m0 < L; m0 += BM) {
        __syncthreads();  // every thread is done with the previous tile's q_s, do_s and ds_s
        for (int i = tid; i < BM * CH; i += 128) {
            const int r = i / CH, c = (i % CH) * 8;
            float qv[8], dov[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            load_q8(q_g + c, bias, tok, m0 + r, L, h * HD + c, qv);
            if (m0 + r < L) load8(do_g + (long)(m0 + r) * out_tok + c, dov);
            store8(&q_s[r * LD + c], qv);
            store8(&do_s[r * LD + c], dov);
        }
        for (int i = tid; i < BM; i += 128) {
            lse_s[i] = m0 + i < L ? lse_g[m0 + i] : 0.f;
            delta_s[i] = m0 + i < L ? delta_g[m0 + i] : 0.f;
        }
        __syncthreads();

        // S^T = K Q^T (16 keys x 64 queries), then P^T.
        float st[BM / 8][4];
        mma_by_rows<T, BM / 8, HD / 16>(st, kf, q_s, LD);
#pragma unroll
        for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = n0 + kr + g + (e >> 1) * 8, qc = j * 8 + tig * 2 + (e & 1), q = m0 + qc;
                const bool ok = key < L && q < L && (!causal || key <= q);
                st[j][e] = ok ? exp2f(st[j][e] * scale_log2 - lse_s[qc]) : 0.f;
            }
        }
        // dV += P^T dO; dP^T = V dO^T.
        float dpt[BM / 8][4];
        mma_by_rows<T, BM / 8, HD / 16>(dpt, vf, do_s, LD);
        mma_acc_by_tile<T, BM / 16, HD / 8>(dv, st, do16, LD);
        // dS^T = P^T (dP^T - delta); kept in dpt, and stored for dQ.
#pragma unroll
        for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) dpt[j][e] = st[j][e] * (dpt[j][e] - delta_s[j * 8 + tig * 2 + (e & 1)]);
#pragma unroll
            for (int r = 0; r < 2; ++r)
                *reinterpret_cast<uint32_t*>(&ds_s[(kr + g + r * 8) * LDS + j * 8 + tig * 2]) =
                    pack2<T>(dpt[j][2 * r], dpt[j][2 * r + 1]);
        }
        // dK += dS^T Q.
        mma_acc_by_tile<T, BM / 16, HD / 8>(dk, dpt, q16, LD);
        __syncthreads();  // every warp's dS^T rows are in ds_s
        // dQ (this warp's 16 queries x HD) = dS K over the block's 64 keys, added into dq.
        const int qr = warp * 16;
        float dqa[HD / 8][4];
#pragma unroll
        for (int jd = 0; jd < HD / 8; ++jd) dqa[jd][0] = dqa[jd][1] = dqa[jd][2] = dqa[jd][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            uint32_t a[4];
            load_a_trans(ds16, LDS, qr, kk * 16, a);
#pragma unroll
            for (int jd = 0; jd < HD / 8; ++jd) {
                uint32_t b[2];
                load_b_cols(k16, LD, kk * 16, jd * 8, b);
                mma16816<T>(dqa[jd], a, b);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int q = m0 + qr + g + r * 8;
            if (q < L) {
                float* dst = dq + ((long)n * L + q) * out_tok + (long)h * HD;
#pragma unroll
                for (int jd = 0; jd < HD / 8; ++jd) {
                    atomicAdd(dst + jd * 8 + tig * 2, dqa[jd][2 * r] * scale);
                    atomicAdd(dst + jd * 8 + tig * 2 + 1, dqa[jd][2 * r + 1] * scale);
                }
            }
        }
    }
    // dK (scaled) and dV into their slots of dqkv.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = n0 + kr + g + r * 8;
        if (key < L) {
            T* dst = dqkv + ((long)n * L + key) * tok + (long)h * HD;
#pragma unroll
            for (int jd = 0; jd < HD / 8; ++jd) {
                const int d = jd * 8 + tig * 2;
                *reinterpret_cast<uint32_t*>(dst + (long)H * HD + d) = pack2<T>(dk[jd][2 * r] * scale, dk[jd][2 * r + 1] * scale);
                *reinterpret_cast<uint32_t*>(dst + 2L * H * HD + d) = pack2<T>(dv[jd][2 * r], dv[jd][2 * r + 1]);
            }
        }
    }
}

// dqkv[:, :, 0] = dq (f32 [tokens, H*HD] -> the q slot of [tokens, 3, H*HD]).
template <typename T>
__device__ __forceinline__ void attention_bwd_dq(const float* __restrict__ dq, T* __restrict__ dqkv, long tokens, int width) {
    const long n = tokens * width;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long t = i / width;
        dqkv[t * 3 * width + i % width] = from_f<T>(dq[i]);
    }
}

#define ATTENTION_BWD(SUFFIX, T)                                                                             \
    extern "C" __global__ void attention_bwd_delta_##SUFFIX(const T* out, const T* dout, const T* bias,    \
                                                            float* delta, int tokens, int L, int H, int HD) { \
        attention_bwd_delta<T>(out, dout, bias, delta, tokens, L, H, HD);                                   \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128) attention_bwd_##SUFFIX##_hd64(                       \
        const T* qkv, const T* bias, const T* dout, const float* lse, const float* delta, T* dqkv, float* dq, \
        int L, int H, float scale_log2, float scale, int causal) {                                          \
        attention_bwd<T, 64>(qkv, bias, dout, lse, delta, dqkv, dq, L, H, scale_log2, scale, causal);       \
    }                                                                                                        \
    extern "C" __global__ void attention_bwd_dq_##SUFFIX(const float* dq, T* dqkv, long tokens, int width) { \
        attention_bwd_dq<T>(dq, dqkv, tokens, width);                                                       \
    }
ATTENTION_BWD(bf16, __nv_bfloat16)
ATTENTION_BWD(f16, __half)

// ---------------------------------------------------------------------------------------------------
// Residual add + LayerNorm (one warp per row; cols % 8 == 0, cols <= 2048)
// ---------------------------------------------------------------------------------------------------
constexpr int LN_MAX_CHUNKS = 8;  // 8 chunks x 32 lanes x 8 values = 2048 columns

// s = x (+ d (+ d_bias)), written to s_out when d is given; y = (s - mean) / sqrt(var + eps) * w + b when
// y is given. Rows of x, d, s_out, y are contiguous with `cols` values.
template <typename T>
__device__ __forceinline__ void residual_layer_norm(const T* __restrict__ x, const T* __restrict__ d,
                                                    const T* __restrict__ d_bias, const T* __restrict__ w,
                                                    const T* __restrict__ b, T* __restrict__ s_out, T* __restrict__ y,
                                                    int rows, int cols, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const long off = (long)row * cols;
    float v[LN_MAX_CHUNKS][8];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < LN_MAX_CHUNKS; ++i) {
        const int c = (i * 32 + lane) * 8;
        if (c < cols) {
            load8(x + off + c, v[i]);
            if (d) {
                float t[8];
                load8(d + off + c, t);
#pragma unroll
                for (int j = 0; j < 8; ++j) v[i][j] += t[j];
                if (d_bias) {
                    load8(d_bias + c, t);
#pragma unroll
                    for (int j = 0; j < 8; ++j) v[i][j] += t[j];
                }
#pragma unroll
                for (int j = 0; j < 8; ++j) v[i][j] = round_to<T>(v[i][j]);
                store8(s_out + off + c, v[i]);
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) sum += v[i][j];
        }
    }
    if (!y) return;
    const float mean = warp_sum(sum) / cols;
    float var = 0.f;
#pragma unroll
    for (int i = 0; i < LN_MAX_CHUNKS; ++i) {
        if ((i * 32 + lane) * 8 < cols) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float t = v[i][j] - mean;
                var += t * t;
            }
        }
    }
    const float rstd = rsqrtf(warp_sum(var) / cols + eps);
#pragma unroll
    for (int i = 0; i < LN_MAX_CHUNKS; ++i) {
        const int c = (i * 32 + lane) * 8;
        if (c < cols) {
            float wt[8], bt[8], out[8];
            load8(w + c, wt);
            load8(b + c, bt);
#pragma unroll
            for (int j = 0; j < 8; ++j) out[j] = (v[i][j] - mean) * rstd * wt[j] + bt[j];
            store8(y + off + c, out);
        }
    }
}

// LayerNorm input gradient: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w.
template <typename T>
__device__ __forceinline__ void layer_norm_bwd_dx(const T* __restrict__ x, const T* __restrict__ dy,
                                                  const T* __restrict__ w, T* __restrict__ dx, int rows, int cols,
                                                  float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const long off = (long)row * cols;
    float v[LN_MAX_CHUNKS][8], gr[LN_MAX_CHUNKS][8];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < LN_MAX_CHUNKS; ++i) {
        const int c = (i * 32 + lane) * 8;
        if (c < cols) {
            float wt[8];
            load8(x + off + c, v[i]);
            load8(dy + off + c, gr[i]);
            load8(w + c, wt);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                sum += v[i][j];
                gr[i][j] *= wt[j];
            }
        }
    }
    const float mean = warp_sum(sum) / cols;
    float var = 0.f;
#pragma unroll
    for (int i = 0; i < LN_MAX_CHUNKS; ++i) {
        if ((i * 32 + lane) * 8 < cols) {
#pragma unroll
            for (int j = 0; j < 8; ++j) var += (v[i][j] - mean) * (v[i][j] - mean);
        }
    }
    const float rstd = rsqrtf(warp_sum(var) / cols + eps);
    float g_sum = 0.f, gx_sum = 0.f;
#pragma unroll
    for (int i = 0; i < LN_MAX_CHUNKS; ++i) {
        if ((i * 32 + lane) * 8 < cols) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                v[i][j] = (v[i][j] - mean) * rstd;  // xhat
                g_sum += gr[i][j];
                gx_sum += gr[i][j] * v[i][j];
            }
        }
    }
    const float g_mean = warp_sum(g_sum) / cols, gx_mean = warp_sum(gx_sum) / cols;
#pragma unroll
    for (int i = 0; i < LN_MAX_CHUNKS; ++i) {
        const int c = (i * 32 + lane) * 8;
        if (c < cols) {
            float out[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) out[j] = rstd * (gr[i][j] - g_mean - v[i][j] * gx_mean);
            store8(dx + off + c, out);
        }
    }
}

// LayerNorm parameter gradients, partial per block of `rows_per_block` rows: partial [2, blocks, cols] f32
// with dw = sum(dy * xhat) at [0, block, :] and db = sum(dy) at [1, block, :]. One thread per column.
template <typename T>
__device__ __forceinline__ void layer_norm_bwd_params(const T* __restrict__ x, const T* __restrict__ dy,
                                                      float* __restrict__ partial, int rows, int cols, float eps,
                                                      int rows_per_block) {
    extern __shared__ float stats[];  // [rows_per_block][2]: mean, rstd
    const int r0 = blockIdx.y * rows_per_block;
    const int r1 = min(rows, r0 + rows_per_block);
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = r0 + warp; r < r1; r += warps) {
        const T* xr = x + (long)r * cols;
        float s = 0.f, s2 = 0.f;
        for (int c = lane; c < cols; c += 32) s += to_f(xr[c]);
        const float mean = warp_sum(s) / cols;
        for (int c = lane; c < cols; c += 32) {
            const float t = to_f(xr[c]) - mean;
            s2 += t * t;
        }
        const float rstd = rsqrtf(warp_sum(s2) / cols + eps);
        if (lane == 0) {
            stats[2 * (r - r0)] = mean;
            stats[2 * (r - r0) + 1] = rstd;
        }
    }
    __syncthreads();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float dw = 0.f, db = 0.f;
    for (int r = r0; r < r1; ++r) {
        const float g = to_f(dy[(long)r * cols + c]);
        dw += g * (to_f(x[(long)r * cols + c]) - stats[2 * (r - r0)]) * stats[2 * (r - r0) + 1];
        db += g;
    }
    partial[(long)blockIdx.y * cols + c] = dw;
    partial[((long)gridDim.y + blockIdx.y) * cols + c] = db;
}

// ---------------------------------------------------------------------------------------------------
// Bias + QuickGELU (x [rows, cols] contiguous, bias [cols]; cols % 8 == 0)
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ float sigmoid_f(float v) { return 1.f / (1.f + __expf(-v)); }

template <typename T>
__device__ __forceinline__ void bias_quick_gelu_fwd(const T* __restrict__ x, const T* __restrict__ bias,
                                                    T* __restrict__ y, long n, int cols) {
    for (long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n; i += (long)gridDim.x * blockDim.x * 8) {
        float v[8], b[8];
        load8(x + i, v);
        load8(bias + (int)(i % cols), b);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float u = round_to<T>(v[j] + b[j]);
            v[j] = u * sigmoid_f(1.702f * u);
        }
        store8(y + i, v);
    }
}

// du = dy * d/du [u sigmoid(1.702 u)] with u = x + b.
template <typename T>
__device__ __forceinline__ void bias_quick_gelu_bwd(const T* __restrict__ x, const T* __restrict__ bias,
                                                    const T* __restrict__ dy, T* __restrict__ du, long n, int cols) {
    for (long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n; i += (long)gridDim.x * blockDim.x * 8) {
        float v[8], b[8], g[8];
        load8(x + i, v);
        load8(bias + (int)(i % cols), b);
        load8(dy + i, g);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float u = round_to<T>(v[j] + b[j]);
            const float sg = sigmoid_f(1.702f * u);
            v[j] = g[j] * (sg + 1.702f * u * sg * (1.f - sg));
        }
        store8(du + i, v);
    }
}

// y = x + bias, bias broadcast over rows (x [rows, cols] contiguous; cols % 8 == 0).
template <typename T>
__device__ __forceinline__ void bias_add(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, long n,
                                         int cols) {
    for (long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n; i += (long)gridDim.x * blockDim.x * 8) {
        float v[8], b[8];
        load8(x + i, v);
        load8(bias + (int)(i % cols), b);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] += b[j];
        store8(y + i, v);
    }
}

// Column sums of x [rows, cols] in f32 over blocks of `rows_per_block` rows: partial [blocks, cols]. One
// thread per column, so a warp reads 32 neighbouring values of a row.
template <typename T>
__device__ __forceinline__ void column_sum(const T* __restrict__ x, float* __restrict__ partial, int rows, int cols,
                                           int rows_per_block) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int r0 = blockIdx.y * rows_per_block, r1 = min(rows, r0 + rows_per_block);
    float s = 0.f;
    for (int r = r0; r < r1; ++r) s += to_f(x[(long)r * cols + c]);
    partial[(long)blockIdx.y * cols + c] = s;
}

#define ELEMENTWISE(SUFFIX, T)                                                                               \
    extern "C" __global__ void residual_layer_norm_##SUFFIX(const T* x, const T* d, const T* d_bias,       \
                                                            const T* w, const T* b, T* s_out, T* y, int rows, \
                                                            int cols, float eps) {                          \
        residual_layer_norm<T>(x, d, d_bias, w, b, s_out, y, rows, cols, eps);                              \
    }                                                                                                        \
    extern "C" __global__ void layer_norm_bwd_dx_##SUFFIX(const T* x, const T* dy, const T* w, T* dx, int rows, \
                                                          int cols, float eps) {                            \
        layer_norm_bwd_dx<T>(x, dy, w, dx, rows, cols, eps);                                                \
    }                                                                                                        \
    extern "C" __global__ void layer_norm_bwd_params_##SUFFIX(const T* x, const T* dy, float* partial, int rows, \
                                                              int cols, float eps, int rows_per_block) {    \
        layer_norm_bwd_params<T>(x, dy, partial, rows, cols, eps, rows_per_block);                          \
    }                                                                                                        \
    extern "C" __global__ void bias_quick_gelu_fwd_##SUFFIX(const T* x, const T* bias, T* y, long n, int cols) { \
        bias_quick_gelu_fwd<T>(x, bias, y, n, cols);                                                        \
    }                                                                                                        \
    extern "C" __global__ void bias_quick_gelu_bwd_##SUFFIX(const T* x, const T* bias, const T* dy, T* du, long n, \
                                                            int cols) {                                     \
        bias_quick_gelu_bwd<T>(x, bias, dy, du, n, cols);                                                   \
    }                                                                                                        \
    extern "C" __global__ void bias_add_##SUFFIX(const T* x, const T* bias, T* y, long n, int cols) {      \
        bias_add<T>(x, bias, y, n, cols);                                                                   \
    }                                                                                                        \
    extern "C" __global__ void column_sum_##SUFFIX(const T* x, float* partial, int rows, int cols,         \
                                                   int rows_per_block) {                                    \
        column_sum<T>(x, partial, rows, cols, rows_per_block);                                              \
    }
ELEMENTWISE(bf16, __nv_bfloat16)
ELEMENTWISE(f16, __half)
ELEMENTWISE(f32, float)
