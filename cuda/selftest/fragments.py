# Emulates (numpy) the shared-memory swizzles, ldmatrix and mma.sync fragment layouts as PTX documents them, with
# the exact index formulas of cuda/gemm_w4a4.cu (INT4 s8-unpacked and native s4, NVFP4) and of the low-rank
# BF16 MMA in cuda/quantize_lowrank.cu, against direct integer matmuls. Run by cuda/compile-check.sh; it checks
# the index algebra, not the hardware (the GPU tests do that).
import numpy as np
rng = np.random.default_rng(1)
BM=BN=128; BKB=64
def swz(r,c): return r*BKB + ((c ^ ((r>>1)&3))<<4)
def store(tile):  # tile: [128 rows, 128 nibbles] int -> smem bytes
    sm = np.zeros(128*64, np.uint8)
    for r in range(128):
        by = [(tile[r,2*i] & 0xf) | ((tile[r,2*i+1] & 0xf)<<4) for i in range(64)]
        for c in range(4):
            a = swz(r,c); sm[a:a+16] = by[c*16:(c+1)*16]
    return sm
def word(sm, addr): return int(sm[addr]) | int(sm[addr+1])<<8 | int(sm[addr+2])<<16 | int(sm[addr+3])<<24
def ldmatrix_x4(sm, addrs):  # addrs[lane] -> regs[lane][4]
    return [[word(sm, addrs[8*i + T//4] + 4*(T%4)) for i in range(4)] for T in range(32)]
def s4even(w): return [((w>>(8*j))&0xf) - (16 if (w>>(8*j))&0x8 else 0) for j in range(4)]
def s4odd(w): return [((w>>(8*j+4))&0xf) - (16 if (w>>(8*j+4))&0x8 else 0) for j in range(4)]
def mma_s8(D, A, B):  # A[T]=(a0..a3) lists of 4 ints, B[T]=(b0,b1); D[T]=4 ints
    Am = np.zeros((16,32),int); Bm = np.zeros((32,8),int)
    for T in range(32):
        g,t = T//4, T%4
        for j in range(4):
            Am[g][t*4+j]=A[T][0][j]; Am[g+8][t*4+j]=A[T][1][j]; Am[g][16+t*4+j]=A[T][2][j]; Am[g+8][16+t*4+j]=A[T][3][j]
            Bm[t*4+j][g]=B[T][0][j]; Bm[16+t*4+j][g]=B[T][1][j]
    C = Am@Bm
    for T in range(32):
        g,t=T//4,T%4
        D[T][0]+=C[g][2*t]; D[T][1]+=C[g][2*t+1]; D[T][2]+=C[g+8][2*t]; D[T][3]+=C[g+8][2*t+1]
def mma_s4(D, A, B):  # native m16n8k64: a0 row g k t*8+i, a1 row g+8, a2 k+32, a3; b0 k t*8+i col g, b1 k+32
    Am = np.zeros((16,64),int); Bm=np.zeros((64,8),int)
    nib = lambda w,i: ((w>>(4*i))&0xf) - (16 if (w>>(4*i))&0x8 else 0)
    for T in range(32):
        g,t=T//4,T%4
        for i in range(8):
            Am[g][t*8+i]=nib(A[T][0],i); Am[g+8][t*8+i]=nib(A[T][1],i); Am[g][32+t*8+i]=nib(A[T][2],i); Am[g+8][32+t*8+i]=nib(A[T][3],i)
            Bm[t*8+i][g]=nib(B[T][0],i); Bm[32+t*8+i][g]=nib(B[T][1],i)
    C=Am@Bm
    for T in range(32):
        g,t=T//4,T%4
        D[T][0]+=C[g][2*t]; D[T][1]+=C[g][2*t+1]; D[T][2]+=C[g+8][2*t]; D[T][3]+=C[g+8][2*t+1]
A = rng.integers(-8,8,(128,128)); W = rng.integers(-8,8,(128,128))
sa, sb = store(A), store(W)
ok = True
for warp in range(8):
    wm, wn = warp>>2, warp&3
    for kk in range(2):
        ref = A[:, kk*64:(kk+1)*64] @ W[:, kk*64:(kk+1)*64].T
        bfr = [[[0,0] for _ in range(4)] for T in range(32)]
        for pr in range(2):
            addrs = [swz(wn*32 + pr*16 + (L&7) + (L>>4)*8, 2*kk + ((L>>3)&1)) for L in range(32)]
            r = ldmatrix_x4(sb, addrs)
            for T in range(32):
                bfr[T][2*pr] = [r[T][0], r[T][1]]; bfr[T][2*pr+1] = [r[T][2], r[T][3]]
        for mi in range(4):
            addrs = [swz(wm*64 + mi*16 + (L&7) + ((L>>3)&1)*8, 2*kk + (L>>4)) for L in range(32)]
            afr = ldmatrix_x4(sa, addrs)
            for ni in range(4):
                for path in ('s8','s4'):
                    D = [[0]*4 for _ in range(32)]
                    if path == 's8':
                        mma_s8(D, [[s4even(afr[T][q]) for q in range(4)] for T in range(32)], [[s4even(bfr[T][ni][0]), s4even(bfr[T][ni][1])] for T in range(32)])
                        mma_s8(D, [[s4odd(afr[T][q]) for q in range(4)] for T in range(32)], [[s4odd(bfr[T][ni][0]), s4odd(bfr[T][ni][1])] for T in range(32)])
                    else:
                        mma_s4(D, [afr[T] for T in range(32)], [bfr[T][ni] for T in range(32)])
                    for T in range(32):
                        rl = wm*64 + mi*16 + (T>>2); cl = wn*32 + ni*8 + (T&3)*2
                        exp = [ref[rl][cl], ref[rl][cl+1], ref[rl+8][cl], ref[rl+8][cl+1]]
                        if D[T] != exp: ok = False; print('mismatch', path, warp, kk, mi, ni, T, D[T], exp); break
print('W4A4 fragment algebra:', 'ok' if ok else 'FAILED'); all_ok = ok

# ---- NVFP4 path: per group of 16, one s8 MMA with non-owner lanes zeroed ----
E2 = [0,1,2,3,4,6,8,12]
def e2m1_even(w):  # bytes j <- code of nibble 2j, as 2*value
    out=[]
    for j in range(4):
        c=(w>>(8*j))&0xf; v=E2[c&7]; out.append(-v if c&8 else v)
    return out
def e2m1_odd(w): return e2m1_even(w>>4)
val = lambda c: (-E2[c&7] if c&8 else E2[c&7])
Ac = rng.integers(0,16,(128,128)); Wc = rng.integers(0,16,(128,128))
sa, sb = store(Ac), store(Wc)
Av = np.vectorize(val)(Ac); Wv = np.vectorize(val)(Wc)
ok=True
for warp in range(8):
    wm, wn = warp>>2, warp&3
    for kk in range(2):
        bfr = [[[0,0] for _ in range(4)] for T in range(32)]
        for pr in range(2):
            r = ldmatrix_x4(sb, [swz(wn*32 + pr*16 + (L&7) + (L>>4)*8, 2*kk + ((L>>3)&1)) for L in range(32)])
            for T in range(32): bfr[T][2*pr]=[r[T][0],r[T][1]]; bfr[T][2*pr+1]=[r[T][2],r[T][3]]
        for mi in range(4):
            afr = ldmatrix_x4(sa, [swz(wm*64 + mi*16 + (L&7) + ((L>>3)&1)*8, 2*kk + (L>>4)) for L in range(32)])
            for gj in range(4):
                k0 = kk*64 + gj*16
                ref = Av[:, k0:k0+16] @ Wv[:, k0:k0+16].T
                for ni in range(4):
                    D=[[0]*4 for _ in range(32)]
                    Aq=[];Bq=[]
                    for T in range(32):
                        mine = ((T&3)>>1) == (gj&1)
                        wa0 = afr[T][0] if gj<2 else afr[T][2]; wa1 = afr[T][1] if gj<2 else afr[T][3]
                        z=[0,0,0,0]
                        Aq.append([e2m1_even(wa0) if mine else z, e2m1_even(wa1) if mine else z, e2m1_odd(wa0) if mine else z, e2m1_odd(wa1) if mine else z])
                        wb = bfr[T][ni][0] if gj<2 else bfr[T][ni][1]
                        Bq.append([e2m1_even(wb) if mine else z, e2m1_odd(wb) if mine else z])
                    mma_s8(D, Aq, Bq)
                    for T in range(32):
                        rl = wm*64 + mi*16 + (T>>2); cl = wn*32 + ni*8 + (T&3)*2
                        exp=[ref[rl][cl], ref[rl][cl+1], ref[rl+8][cl], ref[rl+8][cl+1]]
                        if D[T]!=exp: ok=False; print('fp4 mismatch', warp,kk,mi,gj,ni,T,D[T],exp); break
print('NVFP4 fragment algebra:', 'ok' if ok else 'FAILED'); all_ok = all_ok and ok

# ---- low-rank BF16 MMA in the quantize kernel: x tile [32][64], ld tile [R][64], swizzled 8-element chunks ----
def swzq(r,k): return r*64 + (((k>>3) ^ (r&7))<<3) + (k&7)
X = rng.integers(-50,50,(32,64)); LD = rng.integers(-50,50,(32,64))  # small ints stand in for bf16 values
xs = np.zeros(32*64,int); ls = np.zeros(32*64,int)
for r in range(32):
    for k in range(64): xs[swzq(r,k)] = X[r,k]; ls[swzq(r,k)] = LD[r,k]
def ld16(sm, addrs, n):  # ldmatrix .xn on b16: thread T gets from matrix i the pair (row T/4, cols 2*(T%4), +1)
    return [[(sm[addrs[8*i + T//4] + 2*(T%4)], sm[addrs[8*i + T//4] + 2*(T%4) + 1]) for i in range(n)] for T in range(32)]
ok=True
ref = X @ LD.T
for warp in range(8):
    for i in range(4):  # rank 32 -> tiles = 2*32/8 = 8 -> one per warp
        t = warp + 8*i
        if t >= 8: break
        mt, nt = t&1, t>>1
        D = np.zeros((16,8),int)
        for ks in range(4):
            af = ld16(xs, [swzq(mt*16 + (L&7) + ((L>>3)&1)*8, (ks*2 + (L>>4))*8) for L in range(32)], 4)
            bf = ld16(ls, [swzq(nt*8 + (L&7), (ks*2 + ((L>>3)&1))*8) for L in range(32)], 2)
            Am=np.zeros((16,16),int); Bm=np.zeros((16,8),int)
            for T in range(32):
                g,tq=T//4,T%4
                for e in range(2):  # m16n8k16 bf16: a0 (g, 2t+e), a1 (g+8, 2t+e), a2 (g, 8+2t+e), a3 (g+8, 8+2t+e); b0 (k 2t+e, n g), b1 (k 8+2t+e)
                    Am[g][2*tq+e]=af[T][0][e]; Am[g+8][2*tq+e]=af[T][1][e]; Am[g][8+2*tq+e]=af[T][2][e]; Am[g+8][8+2*tq+e]=af[T][3][e]
                    Bm[2*tq+e][g]=bf[T][0][e]; Bm[8+2*tq+e][g]=bf[T][1][e]
            D += Am@Bm
        if not np.array_equal(D, ref[mt*16:mt*16+16, nt*8:nt*8+8]): ok=False; print('lora mismatch', warp, t)
print('low-rank BF16 fragment algebra:', 'ok' if ok else 'FAILED')
import sys; sys.exit(0 if all_ok and ok else 1)
