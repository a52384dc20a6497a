// Builds one JavaScript plugin component with componentize-js (library call: the
// `jco componentize` CLI fails on these machines with "failed to get path metadata").
//
//   node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { componentize } from '@bytecodealliance/componentize-js';

const [source, witPath, worldName, out] = process.argv.slice(2);
if (!source || !witPath || !worldName || !out) {
  console.error('usage: node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm');
  process.exit(2);
}

const { component } = await componentize({
  // A path (not source text), so relative imports next to the source resolve.
  sourcePath: resolve(source),
  witPath: resolve(witPath),
  worldName,
  // The host gives plugins no clocks, randomness, stdio or network (WASI with an empty
  // context); importing fewer interfaces keeps the component small and honest.
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
console.error(`componentize-js: wrote ${out} (${component.byteLength} bytes)`);
