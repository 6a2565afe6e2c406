// --lora FILE[:STRENGTH] parsing.
import test from 'ava';
import { parseLoraArg, parseLoraArgs } from '../../sidecar/cli/lora-args.ts';

test('file with and without a strength', (t) => {
  t.deepEqual(parseLoraArg('a.safetensors'), { path: 'a.safetensors', strength: 1 });
  t.deepEqual(parseLoraArg('a.safetensors:0.75'), { path: 'a.safetensors', strength: 0.75 });
  t.deepEqual(parseLoraArg('/x/y.safetensors:-1.5'), { path: '/x/y.safetensors', strength: -1.5 });
  t.deepEqual(parseLoraArg('y:1e-1'), { path: 'y', strength: 0.1 });
  t.deepEqual(parseLoraArg('y:.5'), { path: 'y', strength: 0.5 });
  t.deepEqual(parseLoraArg('y:0'), { path: 'y', strength: 0 });
});

test('colons inside the path are kept when no number follows the last one', (t) => {
  t.deepEqual(parseLoraArg('C:\\loras\\style.safetensors'), { path: 'C:\\loras\\style.safetensors', strength: 1 });
  t.deepEqual(parseLoraArg('C:\\loras\\style.safetensors:0.3'), { path: 'C:\\loras\\style.safetensors', strength: 0.3 });
  t.deepEqual(parseLoraArg('weird:name.safetensors'), { path: 'weird:name.safetensors', strength: 1 });
  t.deepEqual(parseLoraArg('trailing:'), { path: 'trailing:', strength: 1 });
});

test('repeatable, and errors are clear', (t) => {
  t.deepEqual(parseLoraArgs(undefined), []);
  t.deepEqual(parseLoraArgs(['a:2', 'b']), [{ path: 'a', strength: 2 }, { path: 'b', strength: 1 }]);
  t.deepEqual(parseLoraArgs('a'), [{ path: 'a', strength: 1 }]);
  t.throws(() => parseLoraArg(''), { message: /--lora needs a file/ });
  t.throws(() => parseLoraArg('a:1e999'), { message: /strength 1e999 is not a finite number/ });
});
