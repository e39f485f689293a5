// The client's TypeScript types (clients/js/herald.d.ts) type-check an application that
// uses them (tests/js/types/example.ts) under `tsc --strict`, and refuse its misuses.
// tsc is Debian's node-typescript (scripts/install-deps.sh installs it).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

test('herald.d.ts: tsc --noEmit --strict accepts the example and refuses its misuses', () => {
  const args = ['--noEmit', '--strict', '--target', 'es2020', '--lib', 'es2020,dom', '--module', 'esnext', '--moduleResolution', 'node', path.join(here, 'types/example.ts')];
  const run = spawnSync('tsc', args, { encoding: 'utf8' });
  assert.ok(!run.error, `tsc did not run (${run.error?.code}): install Debian's node-typescript (scripts/install-deps.sh does)`);
  assert.equal(run.status, 0, `tsc ${args.join(' ')}\n${run.stdout}${run.stderr}`);
});
