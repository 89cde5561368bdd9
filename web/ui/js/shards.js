// Which broker shard a restaurant uses: the same hash as core/shards.py, so the browser dials the
// broker the bridge and the simulator expect. Python: int.from_bytes(blake2b(id, digest_size=8), "big") % n.
// BLAKE2b (RFC 7693) in BigInt: ids are at most 64 bytes, a lookup happens once per connection.

const MASK = (1n << 64n) - 1n;
const IV = [
  0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n,
  0x510e527fade682d1n, 0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n,
];
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

const rotr = (x, n) => ((x >> n) | (x << (64n - n))) & MASK;

function compress(h, block, counter, last) {
  const m = [];
  for (let i = 0; i < 16; i++) {
    let word = 0n;
    for (let b = 7; b >= 0; b--) word = (word << 8n) | BigInt(block[i * 8 + b]);
    m.push(word);
  }
  const v = [...h, ...IV];
  v[12] ^= counter & MASK;
  v[13] ^= counter >> 64n;
  if (last) v[14] ^= MASK;
  const g = (a, b, c, d, x, y) => {
    v[a] = (v[a] + v[b] + x) & MASK;
    v[d] = rotr(v[d] ^ v[a], 32n);
    v[c] = (v[c] + v[d]) & MASK;
    v[b] = rotr(v[b] ^ v[c], 24n);
    v[a] = (v[a] + v[b] + y) & MASK;
    v[d] = rotr(v[d] ^ v[a], 16n);
    v[c] = (v[c] + v[d]) & MASK;
    v[b] = rotr(v[b] ^ v[c], 63n);
  };
  for (let round = 0; round < 12; round++) {
    const s = SIGMA[round % 10];
    g(0, 4, 8, 12, m[s[0]], m[s[1]]);
    g(1, 5, 9, 13, m[s[2]], m[s[3]]);
    g(2, 6, 10, 14, m[s[4]], m[s[5]]);
    g(3, 7, 11, 15, m[s[6]], m[s[7]]);
    g(0, 5, 10, 15, m[s[8]], m[s[9]]);
    g(1, 6, 11, 12, m[s[10]], m[s[11]]);
    g(2, 7, 8, 13, m[s[12]], m[s[13]]);
    g(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (let i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/** BLAKE2b of `bytes` (a Uint8Array) with an `outlen`-byte digest (1..64), unkeyed. */
export function blake2b(bytes, outlen) {
  const h = [...IV];
  h[0] ^= 0x01010000n ^ BigInt(outlen);
  let offset = 0;
  // Every block but the last is compressed as it is; the last (possibly empty) one is padded.
  while (bytes.length - offset > 128) {
    compress(h, bytes.subarray(offset, offset + 128), BigInt(offset + 128), false);
    offset += 128;
  }
  const last = new Uint8Array(128);
  last.set(bytes.subarray(offset));
  compress(h, last, BigInt(bytes.length), true);
  const out = new Uint8Array(outlen);
  for (let i = 0; i < outlen; i++) out[i] = Number((h[i >> 3] >> BigInt(8 * (i & 7))) & 0xffn);
  return out;
}

/** The shard index of a restaurant among `count` broker shards, equal to core.shards.shard_of. */
export function shardOf(restaurantId, count) {
  if (!Number.isInteger(count) || count < 1) throw new RangeError("shard count must be at least 1");
  const digest = blake2b(new TextEncoder().encode(restaurantId), 8);
  let value = 0n;
  for (const byte of digest) value = (value << 8n) | BigInt(byte);
  return Number(value % BigInt(count));
}
