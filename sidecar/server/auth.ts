// The shared-secret token: read from or written to the token file (mode 0600) and checked in
// constant time for REST (Authorization: Bearer) and the channel (header, ?token= or auth frame).
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { homedir } from 'node:os';

export function defaultTokenFile(): string {
  return join(process.env.XDG_CONFIG_HOME || join(homedir(), '.config'), 'svdq', 'token');
}

/** Uses the token already in `file` when it holds one, otherwise writes a fresh one (0600). */
export function loadOrCreateToken(file: string): string {
  if (existsSync(file)) {
    const t = readFileSync(file, 'utf8').trim();
    if (t.length >= 16) return t;
    if (t.length > 0) throw new Error(`token file ${file} holds a token shorter than 16 characters`);
  }
  const token = randomBytes(32).toString('base64url');
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, token + '\n', { mode: 0o600 });
  chmodSync(file, 0o600); // writeFileSync's mode only applies when it creates the file
  return token;
}

// Hash both sides so timingSafeEqual gets equal lengths and the length does not leak either.
const digest = (s: string) => createHash('sha256').update(s).digest();

export function tokenMatches(expected: string, given: unknown): boolean {
  return typeof given === 'string' && timingSafeEqual(digest(expected), digest(given));
}

/** The token of an `Authorization: Bearer X` header, or undefined. */
export function bearer(header: string | undefined): string | undefined {
  const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  return m ? m[1] : undefined;
}
