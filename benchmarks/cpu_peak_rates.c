/* Peak issue rates of the AVX2 int8 GEMM's instruction mix against float32 FMA, one core, no
   memory traffic (8 independent accumulators per variant):
     A: vpsignb + vpabsb + vpmaddubsw + vpmaddwd + vpaddd (lt8's tile_sign, int8_gemm_avx2.cc)
     B: the same with vpmaddwd replaced by a shift-based int16 -> int32 widening
     C: vpmaddubsw + vpmaddwd + vpaddd only (no sign trick: the mul-pipe bound)
     F: float32 vfmadd (what XLA's YNNPACK and MKL kernels issue)
   Build and run on the CPU machine (benchmarks/NOTES.md, "CPU: the demo's bound"):
     gcc -O2 -mavx2 -mfma -o /tmp/cpu_peak_rates benchmarks/cpu_peak_rates.c && /tmp/cpu_peak_rates
*/
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define N 8
__attribute__((noinline)) __m256i varA(long iters, __m256i a, __m256i *b) {
  __m256i acc[N]; for(int i=0;i<N;i++) acc[i]=_mm256_setzero_si256();
  __m256i ones=_mm256_set1_epi16(1);
  for(long it=0;it<iters;it++){
    #pragma GCC unroll 8
    for(int i=0;i<N;i++){ __m256i s=_mm256_sign_epi8(a,b[i]); __m256i t=_mm256_maddubs_epi16(_mm256_abs_epi8(b[i]),s); t=_mm256_madd_epi16(t,ones); acc[i]=_mm256_add_epi32(acc[i],t);} 
    __asm__ volatile("" : "+x"(a));
  }
  __m256i r=acc[0]; for(int i=1;i<N;i++) r=_mm256_add_epi32(r,acc[i]); return r;
}
__attribute__((noinline)) __m256i varB(long iters, __m256i a, __m256i *b) {
  __m256i acc[N], acc2[N]; for(int i=0;i<N;i++) acc[i]=acc2[i]=_mm256_setzero_si256();
  for(long it=0;it<iters;it++){
    #pragma GCC unroll 8
    for(int i=0;i<N;i++){ __m256i s=_mm256_sign_epi8(a,b[i]); __m256i t=_mm256_maddubs_epi16(_mm256_abs_epi8(b[i]),s); acc[i]=_mm256_add_epi32(acc[i],_mm256_srai_epi32(t,16)); acc2[i]=_mm256_add_epi32(acc2[i],_mm256_slli_epi32(t,16));} 
    __asm__ volatile("" : "+x"(a));
  }
  __m256i r=acc[0]; for(int i=1;i<N;i++) r=_mm256_add_epi32(r,_mm256_add_epi32(acc[i],_mm256_srai_epi32(acc2[i],16))); return r;
}
/* variant C: no vpsignb/vpabsb (precomputed |B| and signed A per pair not possible) -> just maddubs+madd+add to see the mul-pipe bound */
__attribute__((noinline)) __m256i varC(long iters, __m256i a, __m256i *b) {
  __m256i acc[N]; for(int i=0;i<N;i++) acc[i]=_mm256_setzero_si256();
  __m256i ones=_mm256_set1_epi16(1);
  for(long it=0;it<iters;it++){
    #pragma GCC unroll 8
    for(int i=0;i<N;i++){ __m256i t=_mm256_maddubs_epi16(b[i],a); t=_mm256_madd_epi16(t,ones); acc[i]=_mm256_add_epi32(acc[i],t);} 
    __asm__ volatile("" : "+x"(a));
  }
  __m256i r=acc[0]; for(int i=1;i<N;i++) r=_mm256_add_epi32(r,acc[i]); return r;
}
__attribute__((noinline)) __m256 varF(long iters, __m256 a, __m256 *b) {
  __m256 acc[N]; for(int i=0;i<N;i++) acc[i]=_mm256_setzero_ps();
  for(long it=0;it<iters;it++){
    #pragma GCC unroll 8
    for(int i=0;i<N;i++){ acc[i]=_mm256_fmadd_ps(a,b[i],acc[i]);} 
    __asm__ volatile("" : "+x"(a));
  }
  __m256 r=acc[0]; for(int i=1;i<N;i++) r=_mm256_add_ps(r,acc[i]); return r;
}
int main(){
  __m256i b[N]; for(int i=0;i<N;i++) b[i]=_mm256_set1_epi8(i+3);
  __m256 bf[N]; for(int i=0;i<N;i++) bf[i]=_mm256_set1_ps(i*0.001f);
  long iters=50000000; volatile int sink=0;
  for(int rep=0;rep<2;rep++){
  double t=now(); __m256i r=varA(iters,_mm256_set1_epi8(5),b); t=now()-t; sink+=_mm256_extract_epi32(r,0);
  printf("A sign+abs+maddubs+madd+add: %.1f GMAC/s\n", iters*N*32/t/1e9);
  t=now(); r=varB(iters,_mm256_set1_epi8(5),b); t=now()-t; sink+=_mm256_extract_epi32(r,0);
  printf("B sign+abs+maddubs+shift widen: %.1f GMAC/s\n", iters*N*32/t/1e9);
  t=now(); r=varC(iters,_mm256_set1_epi8(5),b); t=now()-t; sink+=_mm256_extract_epi32(r,0);
  printf("C maddubs+madd+add only: %.1f GMAC/s\n", iters*N*32/t/1e9);
  t=now(); __m256 rf=varF(iters,_mm256_set1_ps(1.0f),bf); t=now()-t; sink+=(int)_mm256_cvtss_f32(rf);
  printf("F fp32 fma: %.1f GMAC/s\n", iters*N*8/t/1e9);
  }
  return sink==12345;
}
