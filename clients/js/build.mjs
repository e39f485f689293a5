// Builds the browser bundle and measures the client's size, with no npm dependencies:
//   dist/herald.iife.js  a classic <script> build: window.Herald, window.HeraldSubscription
//   dist/herald.min.js   the ES module minified by Debian's terser (when installed)
// and prints the sizes (raw, gzip -9) of herald.js, its comment/indent-stripped form and
// the minified one. `node build.mjs --check` fails when minified + gzip is over 6 KB.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const dir = path.dirname(fileURLToPath(import.meta.url));
const src = fs.readFileSync(path.join(dir, 'herald.js'), 'utf8');
fs.mkdirSync(path.join(dir, 'dist'), { recursive: true });

const iife = '(() => {\n' + src.replace(/^export default Herald;$/m, '').replace(/^export class /gm, 'class ') +
  '\nglobalThis.Herald = Herald;\nglobalThis.HeraldSubscription = Subscription;\n})();\n';
fs.writeFileSync(path.join(dir, 'dist/herald.iife.js'), iife);

// Whole-line comments and indentation out: what any minifier does first.
const stripped = src.split('\n').filter((l) => !/^\s*\/\//.test(l)).map((l) => l.trim()).filter(Boolean).join('\n');

let min = null;
try {
  min = execFileSync('terser', ['--module', '-c', '-m'], { input: src, env: { ...process.env, NODE_PATH: '/usr/share/nodejs' }, stdio: ['pipe', 'pipe', 'ignore'] }).toString();
  fs.writeFileSync(path.join(dir, 'dist/herald.min.js'), min);
} catch {
  console.log('terser not installed (Debian package terser): no minified size');
}

const gz = (s) => zlib.gzipSync(s, { level: 9 }).length;
const row = (name, s) => console.log(`${name.padEnd(28)} ${String(Buffer.byteLength(s)).padStart(6)} bytes, gzip -9 ${String(gz(s)).padStart(5)} bytes`);
row('herald.js', src);
row('stripped (comments, indent)', stripped);
if (min) row('minified (terser -c -m)', min);
if (process.argv.includes('--check') && min && gz(min) > 6144) {
  console.error(`herald.js minified + gzip is ${gz(min)} bytes, over the 6 KB budget`);
  process.exit(1);
}
