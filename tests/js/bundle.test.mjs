// The client as shipped: GET /herald.js and GET /herald-shared.js serve clients/js/ byte
// for byte (as text/javascript, CORS *), the browser bundle defines window.Herald (with
// the sharing module inlined), and minified + gzip stays within 6 KB (the sizes are
// printed).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

import { HeraldServer } from './support.mjs';

const js = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../clients/js');
let s;
after(() => s?.stop());

test('GET /herald.js (and /herald-shared.js) is the client, text/javascript, CORS *', async () => {
  s = await new HeraldServer(['--cors-origins', 'https://only.example']).start();
  const r = await fetch(s.url + '/herald.js', { headers: { Origin: 'https://other.example' } });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/javascript/);
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  assert.equal(await r.text(), fs.readFileSync(path.join(js, 'herald.js'), 'utf8'));
  // The module herald.js imports (from beside itself) for tabs that share a connection.
  const shared = await fetch(s.url + '/herald-shared.js', { headers: { Origin: 'https://other.example' } });
  assert.equal(shared.status, 200);
  assert.match(shared.headers.get('content-type'), /^text\/javascript/);
  assert.equal(shared.headers.get('access-control-allow-origin'), '*');
  assert.equal(await shared.text(), fs.readFileSync(path.join(js, 'herald-shared.js'), 'utf8'));
  const head = await fetch(s.url + '/herald.js', { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(await head.text(), '');
});

test('size: minified + gzip within 6 KB; the IIFE bundle defines Herald', () => {
  const out = execFileSync(process.execPath, [path.join(js, 'build.mjs'), '--check']).toString();
  for (const line of out.trim().split('\n')) console.log('# ' + line);
  const ctx = vm.createContext({});
  vm.runInContext(fs.readFileSync(path.join(js, 'dist/herald.iife.js'), 'utf8'), ctx);
  assert.equal(typeof ctx.Herald, 'function');
  assert.equal(typeof new ctx.Herald('http://x').subscribe, 'function');
  // The sharing code is in the bundle, not imported (a classic script cannot import).
  assert.doesNotMatch(fs.readFileSync(path.join(js, 'dist/herald.iife.js'), 'utf8'), /import\(/);
});
