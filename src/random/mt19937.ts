/**
 * MT19937 (32-bit Mersenne Twister) seeded the way torch's CPU generator seeds it:
 * the 64-bit seed's low 32 bits initialise the state with the standard recurrence.
 * Pure logic, no I/O.
 */
const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER = 0x80000000;
const LOWER = 0x7fffffff;

export class MT19937 {
  private readonly state = new Uint32Array(N);
  private index = N;

  constructor(seed: number | bigint = 5489) {
    this.seed(seed);
  }

  seed(seed: number | bigint): void {
    const s = BigInt.asUintN(64, BigInt(seed));
    const st = this.state;
    st[0] = Number(s & 0xffffffffn);
    for (let j = 1; j < N; j++) {
      const prev = st[j - 1]!;
      st[j] = (Math.imul(1812433253, (prev ^ (prev >>> 30)) >>> 0) + j) >>> 0;
    }
    this.index = N;
  }

  private twist(): void {
    const st = this.state;
    for (let k = 0; k < N; k++) {
      const y = (st[k]! & UPPER) | (st[(k + 1) % N]! & LOWER);
      let v = st[(k + M) % N]! ^ (y >>> 1);
      if (y & 1) v ^= MATRIX_A;
      st[k] = v >>> 0;
    }
    this.index = 0;
  }

  /** Next 32-bit output as an unsigned number in [0, 2^32). */
  nextUint32(): number {
    if (this.index >= N) this.twist();
    let y = this.state[this.index++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}
