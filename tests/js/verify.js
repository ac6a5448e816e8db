// Verify a COSE_Sign1 card with cose-js, an independent COSE implementation.
// Usage: node verify.js CARD.cbor PUBLIC.pem  ->  one JSON line
//   {"alg": int, "verified": bool, "error": str|null}
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const cbor = require('cbor');
const cose = require('cose-js');

const card = fs.readFileSync(process.argv[2]);
const jwk = crypto.createPublicKey(fs.readFileSync(process.argv[3])).export({ format: 'jwk' });
const key = { x: Buffer.from(jwk.x || '', 'base64url'), y: Buffer.from(jwk.y || '', 'base64url') };
const protectedHeader = cbor.decodeFirstSync(cbor.decodeFirstSync(card).value[0]);
const out = { alg: protectedHeader.get(1), verified: false, error: null };
try {
  const payload = cose.sign.verifySync(card, { key });
  out.verified = Buffer.isBuffer(payload) && payload.length > 0;
} catch (err) {
  out.error = String(err.message || err);
}
process.stdout.write(JSON.stringify(out) + '\n');
