// The email/password flow of Tenantry's GoTrue-compatible `/auth/v1`, driven
// by the real @supabase/supabase-js client. Run by tests/supabase_js.rs:
//
//   SUPABASE_URL=http://127.0.0.1:PORT SUPABASE_ANON_KEY=<jwt> EMAIL=<fresh> node password-flow.mjs
//
// The server must run with AUTH_AUTOCONFIRM=true (sign-up returns a session).
// Prints every step and every HTTP exchange; exits 0 only if every check
// holds, 1 (with the failing step, the reason and the last exchanges) otherwise.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'

import { createClient } from '@supabase/supabase-js'
// Node 20 has no global WebSocket and realtime-js refuses to construct
// without one: hand it `ws` (the realtime client is never connected here).
import ws from 'ws'

function env(name) {
  const v = process.env[name]
  if (!v) {
    console.error(`password-flow: ${name} is not set`)
    process.exit(1)
  }
  return v
}

const URL_ = env('SUPABASE_URL').replace(/\/+$/, '')
const ANON_KEY = env('SUPABASE_ANON_KEY')
const EMAIL = env('EMAIL')
const PASSWORD = `Pw-${randomBytes(12).toString('hex')}-a1!`

// ---- HTTP trace -----------------------------------------------------------

/** Every exchange the client made: { method, path, status, apiVersion, req, res }. */
const exchanges = []

const short = (s, n = 700) => (s.length > n ? `${s.slice(0, n)}… (${s.length} chars)` : s)
// JWTs and refresh tokens are long and tell a reader nothing: keep a prefix.
const redact = (s) =>
  s
    .replace(/eyJ[\w-]+\.[\w-]+\.[\w-]+/g, (t) => `${t.slice(0, 12)}…jwt`)
    .replace(/("refresh_token"\s*:\s*")([^"]{12})[^"]*"/g, '$1$2…"')
    .replace(/("password"\s*:\s*")[^"]*"/g, '$1…"')

function describe(x) {
  return (
    `${x.method} ${x.path} -> ${x.status}` +
    ` [x-supabase-api-version: ${x.apiVersion ?? 'absent'}]` +
    (x.req ? `\n      request:  ${short(redact(x.req))}` : '') +
    `\n      response: ${short(redact(x.res)) || '(empty)'}`
  )
}

async function tracingFetch(input, init = {}) {
  const url = new URL(typeof input === 'string' ? input : input.url)
  const method = (init.method ?? 'GET').toUpperCase()
  const req = typeof init.body === 'string' ? init.body : ''
  let res
  try {
    res = await fetch(input, init)
  } catch (e) {
    const x = { method, path: url.pathname + url.search, status: 'network error', req, res: String(e) }
    exchanges.push(x)
    console.log(`    ${describe(x)}`)
    throw e
  }
  const text = await res.clone().text()
  let body
  try {
    body = text ? JSON.parse(text) : undefined
  } catch {
    body = undefined
  }
  const x = {
    method,
    path: url.pathname + url.search,
    status: res.status,
    apiVersion: res.headers.get('x-supabase-api-version'),
    req,
    res: text,
    body,
  }
  exchanges.push(x)
  console.log(`    ${describe(x)}`)
  return res
}

/** The last exchange whose path starts with `prefix`. */
function lastExchange(prefix) {
  for (let i = exchanges.length - 1; i >= 0; i--) {
    if (exchanges[i].path.startsWith(prefix)) return exchanges[i]
  }
  return undefined
}

// ---- steps ------------------------------------------------------------------

let stepNo = 0
let current = ''

async function step(name, fn) {
  stepNo += 1
  current = `${stepNo}. ${name}`
  console.log(`STEP ${current}`)
  const note = await fn()
  console.log(`  ok${note ? `: ${note}` : ''}`)
}

/** A supabase-js `{ error }` as text. */
const errText = (e) =>
  e ? `${e.name} status=${e.status} code=${e.code} message=${JSON.stringify(e.message)}` : 'none'

function noError(error, what) {
  if (error) assert.fail(`${what} returned an error: ${errText(error)}`)
}

function assertSession(session, what) {
  assert.ok(session, `${what}: no session in the response`)
  assert.equal(typeof session.access_token, 'string', `${what}: session.access_token`)
  assert.ok(session.access_token.length > 0, `${what}: empty access_token`)
  assert.equal(typeof session.refresh_token, 'string', `${what}: session.refresh_token`)
  assert.ok(session.refresh_token.length > 0, `${what}: empty refresh_token`)
  assert.equal(String(session.token_type).toLowerCase(), 'bearer', `${what}: token_type`)
  assert.ok(Number(session.expires_in) > 0, `${what}: expires_in = ${session.expires_in}`)
  assert.ok(session.user && typeof session.user.id === 'string', `${what}: session.user.id`)
}

// The refresh of a dead session must be refused with one of these codes.
// (supabase-js turns `session_not_found` into an AuthSessionMissingError
// without a code, so the raw response is what is checked.)
const DEAD_REFRESH_CODES = ['refresh_token_not_found', 'session_not_found', 'refresh_token_already_used']

async function assertRefreshRefused(supabase, refreshToken, what) {
  const before = exchanges.length
  const { data, error } = await supabase.auth.refreshSession({ refresh_token: refreshToken })
  assert.ok(error, `${what}: the refresh succeeded (it must be refused)`)
  assert.equal(data.session, null, `${what}: a session came back with the error`)
  const x = exchanges.slice(before).find((e) => e.path.startsWith('/auth/v1/token'))
  assert.ok(x, `${what}: the client sent no /auth/v1/token request (${errText(error)})`)
  assert.ok(
    typeof x.status === 'number' && x.status >= 400 && x.status < 500,
    `${what}: expected a 4xx, got ${x.status}`,
  )
  const raw = x.body?.code ?? x.body?.error_code
  assert.ok(
    DEAD_REFRESH_CODES.includes(raw),
    `${what}: response code ${JSON.stringify(raw)} is not one of ${DEAD_REFRESH_CODES.join(', ')}`,
  )
  // What the application sees: the code itself, or for session_not_found
  // supabase-js's AuthSessionMissingError.
  const seen = error.code ?? error.name
  assert.ok(
    DEAD_REFRESH_CODES.includes(error.code) || error.name === 'AuthSessionMissingError',
    `${what}: supabase-js reported ${errText(error)}`,
  )
  return `refused: HTTP ${x.status} code=${raw} (supabase-js: ${seen})`
}

// ---- the flow -----------------------------------------------------------------

async function main() {
  console.log(`supabase-js password flow against ${URL_} as ${EMAIL}`)
  const supabase = createClient(URL_, ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: ws },
    global: { fetch: tracingFetch },
  })

  let userId
  let signUpSession
  let session

  await step('signUp with user metadata (autoconfirm: a session comes back)', async () => {
    const { data, error } = await supabase.auth.signUp({
      email: EMAIL,
      password: PASSWORD,
      options: { data: { plan: 'test' } },
    })
    noError(error, 'signUp')
    assert.ok(data.user, 'signUp: no user')
    assert.equal(typeof data.user.id, 'string', 'signUp: user.id')
    assert.equal(data.user.email, EMAIL, 'signUp: user.email')
    assert.equal(data.user.user_metadata?.plan, 'test', 'signUp: user.user_metadata.plan')
    assertSession(data.session, 'signUp (AUTH_AUTOCONFIRM=true)')
    assert.equal(data.session.user.id, data.user.id, 'signUp: session.user.id')
    userId = data.user.id
    signUpSession = data.session
    return `user ${userId}`
  })

  await step('signInWithPassword', async () => {
    const { data, error } = await supabase.auth.signInWithPassword({ email: EMAIL, password: PASSWORD })
    noError(error, 'signInWithPassword')
    assertSession(data.session, 'signInWithPassword')
    assert.equal(data.user.id, userId, 'signInWithPassword: user.id')
    assert.equal(data.user.email, EMAIL, 'signInWithPassword: user.email')
    assert.notEqual(
      data.session.refresh_token,
      signUpSession.refresh_token,
      'signInWithPassword: a new session must have a new refresh token',
    )
    session = data.session
  })

  await step('getUser (GET /auth/v1/user with the access token)', async () => {
    const { data, error } = await supabase.auth.getUser()
    noError(error, 'getUser')
    assert.equal(data.user?.id, userId, 'getUser: user.id')
    assert.equal(data.user.email, EMAIL, 'getUser: user.email')
    assert.equal(data.user.user_metadata?.plan, 'test', 'getUser: user_metadata.plan')
  })

  await step('updateUser({ data: { nickname } }) merges into user_metadata', async () => {
    const { data, error } = await supabase.auth.updateUser({ data: { nickname: 'x' } })
    noError(error, 'updateUser')
    assert.equal(data.user?.id, userId, 'updateUser: user.id')
    const meta = data.user.user_metadata ?? {}
    assert.equal(meta.plan, 'test', `updateUser: user_metadata.plan kept (got ${JSON.stringify(meta)})`)
    assert.equal(meta.nickname, 'x', `updateUser: user_metadata.nickname set (got ${JSON.stringify(meta)})`)
    return `user_metadata ${JSON.stringify(meta)}`
  })

  await step('refreshSession rotates both tokens', async () => {
    // Access tokens carry second-resolution iat/exp: wait so that a fresh one
    // cannot be byte-identical to the current one.
    await sleep(1100)
    const { data, error } = await supabase.auth.refreshSession()
    noError(error, 'refreshSession')
    assertSession(data.session, 'refreshSession')
    assert.equal(data.session.user.id, userId, 'refreshSession: user.id')
    assert.notEqual(data.session.access_token, session.access_token, 'refreshSession: new access token')
    assert.notEqual(data.session.refresh_token, session.refresh_token, 'refreshSession: new refresh token')
    assert.equal(
      data.session.user.user_metadata?.nickname,
      'x',
      'refreshSession: the refreshed user carries the updated metadata',
    )
    session = data.session
  })

  await step('GET /api/v1/me with the refreshed access token', async () => {
    const res = await tracingFetch(`${URL_}/api/v1/me`, {
      headers: { Authorization: `Bearer ${session.access_token}` },
    })
    const body = await res.json().catch(() => null)
    assert.equal(res.status, 200, `/api/v1/me: status ${res.status}`)
    assert.equal(body?.id, userId, '/api/v1/me: id')
  })

  const signedOutRefreshToken = session.refresh_token

  await step("signOut({ scope: 'global' })", async () => {
    const before = exchanges.length
    const { error } = await supabase.auth.signOut({ scope: 'global' })
    noError(error, 'signOut')
    // supabase-js hides 401, 403 and 404 from /logout: check the response itself.
    const x = exchanges.slice(before).find((e) => e.path.startsWith('/auth/v1/logout'))
    assert.ok(x, 'signOut: the client sent no /auth/v1/logout request')
    assert.equal(x.path, '/auth/v1/logout?scope=global', 'signOut: request path')
    assert.ok(
      typeof x.status === 'number' && x.status >= 200 && x.status < 300,
      `signOut: POST /auth/v1/logout answered ${x.status} (supabase-js ignores 401/403/404, the session was not ended)`,
    )
    return `HTTP ${x.status}`
  })

  await step("refresh with the signed-out session's refresh token is refused", async () =>
    assertRefreshRefused(supabase, signedOutRefreshToken, 'refresh after signOut'),
  )

  await step("refresh with the sign-up session's refresh token is refused (scope=global ended every session)", async () =>
    assertRefreshRefused(supabase, signUpSession.refresh_token, 'refresh of another session after global signOut'),
  )

  await step('signInWithPassword with a wrong password', async () => {
    const { data, error } = await supabase.auth.signInWithPassword({ email: EMAIL, password: `${PASSWORD}-wrong` })
    assert.ok(error, 'wrong password: sign-in succeeded')
    assert.equal(data.session, null, 'wrong password: a session came back')
    assert.equal(
      error.code,
      'invalid_credentials',
      `wrong password: supabase-js reported ${errText(error)} (it reads "code" only when the response carries X-Supabase-Api-Version >= 2024-01-01)`,
    )
    assert.equal(error.status, 400, 'wrong password: status')
    return errText(error)
  })
}

try {
  await main()
  console.log(`PASS: all ${stepNo} steps`)
  process.exit(0)
} catch (e) {
  console.error(`\nFAIL at step ${current}`)
  console.error(`  ${e instanceof assert.AssertionError ? e.message : e?.stack ?? e}`)
  const last = exchanges.slice(-3)
  if (last.length) {
    console.error('  last HTTP exchanges:')
    for (const x of last) console.error(`    ${describe(x)}`)
  }
  process.exit(1)
}
