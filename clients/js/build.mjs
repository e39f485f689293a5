// Builds the browser bundle and measures the client's size, with no npm dependencies:
//   dist/herald.iife.js          a classic <script> build: window.Herald, window.HeraldSubscription
//                                (herald-shared.js inlined: a classic script cannot import)
//   dist/herald.min.js           the ES module minified by Debian's terser (when installed)
//   dist/herald-shared.min.js    the tab-sharing module herald.js imports for {shared: true}
// and prints the sizes (raw, gzip -9) of herald.js, its comment/indent-stripped form and
// the minified ones. `node build.mjs --check` fails when herald.js and herald-shared.js
// minified + gzip (what a page that shares loads) are over 6 KB together.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const dir = path.dirname(fileURLToPath(import.meta.url));
const read = (f) => fs.readFileSync(path.join(dir, f), 'utf8');
const src = read('herald.js');
const shared = read('herald-shared.js');
fs.mkdirSync(path.join(dir, 'dist'), { recursive: true });

const LAZY = "import('./herald-shared.js')";
if (!src.includes(LAZY)) throw new Error(`build.mjs: herald.js no longer says ${LAZY}`);
const iife = '(() => {\n' + shared.replace(/^export async function /m, 'async function ') +
  src.replace(/^export default Herald;$/m, '').replace(/^export class /gm, 'class ').replace(LAZY, 'Promise.resolve({ share })') +
  '\nglobalThis.Herald = Herald;\nglobalThis.HeraldSubscription = Subscription;\n})();\n';
fs.writeFileSync(path.join(dir, 'dist/herald.iife.js'), iife);

// Whole-line comments and indentation out: what any minifier does first.
const stripped = src.split('\n').filter((l) => !/^\s*\/\//.test(l)).map((l) => l.trim()).filter(Boolean).join('\n');

const minify = (code, out) => {
  try {
    const min = execFileSync('terser', ['--module', '-c', '-m'], { input: code, env: { ...process.env, NODE_PATH: '/usr/share/nodejs' }, stdio: ['pipe', 'pipe', 'ignore'] }).toString();
    fs.writeFileSync(path.join(dir, 'dist', out), min);
    return min;
  } catch {
    return null;
  }
};
const min = minify(src, 'herald.min.js');
const minShared = min && minify(shared, 'herald-shared.min.js');
if (!min) console.log('terser not installed (Debian package terser): no minified size');

const gz = (s) => zlib.gzipSync(s, { level: 9 }).length;
const row = (name, s) => console.log(`${name.padEnd(34)} ${String(Buffer.byteLength(s)).padStart(6)} bytes, gzip -9 ${String(gz(s)).padStart(5)} bytes`);
row('herald.js', src);
row('stripped (comments, indent)', stripped);
if (min) row('minified (terser -c -m)', min);
row('herald-shared.js', shared);
if (minShared) row('herald-shared.js minified', minShared);
// The budget holds for a page that shares too (herald.js, then herald-shared.js).
const total = min && gz(min) + (minShared ? gz(minShared) : 0);
if (min) console.log(`${'herald.js + herald-shared.js'.padEnd(34)} minified + gzip ${total} bytes`);
if (process.argv.includes('--check') && total > 6144) {
  console.error(`herald.js (with herald-shared.js) minified + gzip is ${total} bytes, over the 6 KB budget`);
  process.exit(1);
}
