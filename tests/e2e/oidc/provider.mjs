// A real OpenID Provider on loopback for the tests: the certified npm
// package `oidc-provider` (pinned by `cargo xtask setup`), configured by a
// JSON file the Rust harness (tests/e2e/harness/oidc.rs) writes.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: { port, issuer, keys_file, key_action, job_client, login_client,
//           users, cookie_key }
//   key_action  "new": generate an RSA key and put it first (it signs), keep
//               the others (rotation); "drop_old": keep only the first key;
//               "keep": use keys_file as it is.
//   job_client  { client_id, client_secret }: client_credentials only; mints
//               CI-job-style JWTs (see getResourceServerInfo and jwtCustomizer).
//   login_client { client_id, client_secret, redirect_uris }: authorization
//               code flow, PKCE (S256) required, consent given automatically.
//   users       { accountId: [groups] }: the dev login page accepts any name;
//               names not listed have no groups.
//
// It listens on 127.0.0.1 only, and none of its clients names a URL off
// loopback, so it never connects anywhere. On SIGHUP it reads CONFIG again
// (applying key_action) and swaps in a new Provider on the same socket, so a
// key rotation never closes the port. Each time it is ready it prints one
// line: "ready PORT KID[,KID...]" (first kid signs).
//
// ESM ignores NODE_PATH: the harness copies this file into a scratch
// directory beside a `node_modules` symlink to the installed packages, so
// the bare import below resolves from there.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json');
  process.exit(2);
}

// Fixed for the tokens' resource indicator: oidc-provider wants an absolute
// URI there, while CI audiences are plain strings ("blastgate"); the
// audience itself comes in the request body.
const JOB_RESOURCE = 'urn:blastgate:ci-job';

function readKeys(file) {
  try {
    return JSON.parse(readFileSync(file, 'utf8')).keys ?? [];
  } catch (e) {
    if (e.code === 'ENOENT') return [];
    throw e;
  }
}

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: randomBytes(8).toString('hex'),
    alg: 'RS256',
    use: 'sig',
  };
}

// Applies key_action and writes the file back (atomically), so the next
// reload, or a restart, starts from the same keys.
function loadKeys(config) {
  let keys = readKeys(config.keys_file);
  switch (config.key_action ?? 'keep') {
    case 'new':
      keys = [newKey(), ...keys];
      break;
    case 'drop_old':
      keys = keys.slice(0, 1);
      break;
    case 'keep':
      break;
    default:
      throw new Error(`unknown key_action ${config.key_action}`);
  }
  if (keys.length === 0) keys = [newKey()];
  const tmp = `${config.keys_file}.tmp`;
  writeFileSync(tmp, JSON.stringify({ keys }, null, 2), { mode: 0o600 });
  renameSync(tmp, config.keys_file);
  return keys;
}

// The JSON object the harness sends as `job_claims`, or {}.
function jobClaims(ctx) {
  const raw = ctx?.oidc?.body?.job_claims;
  if (!raw) return {};
  const claims = JSON.parse(raw);
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    throw new errors.InvalidRequest('job_claims must be a JSON object');
  }
  return claims;
}

function build(config, keys) {
  const { job_client: job, login_client: login, users = {} } = config;
  const isJob = (client) => client?.clientId === job.client_id;

  const configuration = {
    clients: [
      {
        client_id: job.client_id,
        client_secret: job.client_secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
      },
      {
        client_id: login.client_id,
        client_secret: login.client_secret,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: login.redirect_uris,
      },
    ],
    jwks: { keys },
    // Fixed per provider, so a reload keeps login sessions valid.
    cookies: { keys: [config.cookie_key] },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    scopes: ['openid', 'profile', 'groups'],
    // Claims asked for by scope go into the ID token too (the console reads
    // `groups` from it), not only to userinfo.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    },
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id, name: id, preferred_username: id, groups: users[id] ?? [],
          };
        },
      };
    },
    // Consent is given automatically: the login page is the only page.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const existing = await ctx.oidc.provider.Grant.find(grantId);
        if (existing) return existing;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid profile groups');
      await grant.save();
      return grant;
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        async getResourceServerInfo(ctx, resource, client) {
          if (!isJob(client) || resource !== JOB_RESOURCE) {
            throw new errors.InvalidTarget();
          }
          const { audience, ttl } = ctx.oidc.body;
          if (!audience) throw new errors.InvalidRequest('audience is required');
          return {
            scope: '',
            audience,
            accessTokenTTL: ttl ? Number(ttl) : 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    // The job's own claims (repository, ref, workflow, actor, environment…)
    // come from the token request body.
    async extraTokenClaims(ctx, token) {
      if (token.kind !== 'ClientCredentials' || !isJob(token.client)) return undefined;
      return jobClaims(ctx);
    },
    formats: {
      customizers: {
        // Look like a CI job token (GitHub's and GitLab's say typ "JWT"),
        // with a GitHub-style sub, and let a test override registered
        // claims (exp, iat, nbf, sub, aud, iss…) under a valid signature;
        // a null value removes the claim.
        async jwt(ctx, token, jwt) {
          if (token.kind !== 'ClientCredentials' || !isJob(token.client)) return;
          const claims = jobClaims(ctx);
          jwt.header = { typ: 'JWT' };
          if (claims.repository && claims.sub === undefined) {
            jwt.payload.sub = claims.environment
              ? `repo:${claims.repository}:environment:${claims.environment}`
              : `repo:${claims.repository}:ref:${claims.ref ?? ''}`;
          }
          for (const [k, v] of Object.entries(claims)) {
            if (v === null) delete jwt.payload[k];
            else jwt.payload[k] = v;
          }
        },
      },
    },
  };

  const provider = new Provider(config.issuer, configuration);
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  // The built-in pages import a web font from fonts.googleapis.com; drop
  // it, so a browser showing them stays on loopback as well.
  provider.use(async (ctx, next) => {
    await next();
    if (typeof ctx.body === 'string' && ctx.type === 'text/html') {
      ctx.body = ctx.body.replace(/@import url\(https?:[^)]*\);?/g, '');
    }
  });
  return provider;
}

let handler;
let port;

function load() {
  const config = JSON.parse(readFileSync(configPath, 'utf8'));
  if (!config.issuer.startsWith('http://127.0.0.1:') || config.issuer.endsWith('/')) {
    throw new Error(`issuer must be http://127.0.0.1:PORT, got ${config.issuer}`);
  }
  const keys = loadKeys(config);
  handler = build(config, keys).callback();
  port = config.port;
  return keys.map((k) => k.kid).join(',');
}

const kids = load();
const server = createServer((req, res) => handler(req, res));
server.listen(port, '127.0.0.1', () => {
  console.log(`ready ${port} ${kids}`);
});

process.on('SIGHUP', () => {
  try {
    console.log(`ready ${port} ${load()}`);
  } catch (e) {
    console.error('reload failed', e);
    console.log(`failed ${String(e.message).replace(/\n/g, ' ')}`);
  }
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
