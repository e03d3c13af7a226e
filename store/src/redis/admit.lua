-- One admission, atomically (see the key layout in redis.rs).
--
-- KEYS, per budget charge i (1-based): [3i-2] counter hash, [3i-1] lease sorted set,
--   [3i] held hash; then one GCRA bucket string per rate charge.
-- ARGV: [1] budget charges, [2] rate charges, [3] now (ms), [4] lease (ms), [5] reservation id,
--   [6] how long the lease structures outlive their last lease (ms); then 6 per budget charge:
--   limit in nanos ('' = none), limit in tokens ('' = none), nanos, tokens, enforced (1 or 0),
--   counter TTL in ms (-1 = never expires); then 2 per rate charge: cost (µs), period (µs).
--
-- Returns strings: refusal kind (0 admitted, 1 budget, 2 rate), refused index (0-based), then
-- spent nanos, spent tokens, reserved nanos, reserved tokens per budget charge, then the backlog
-- (µs) per rate charge.
--
-- Lua numbers are doubles: amounts compared here are exact below 2^53. Sums are kept by HINCRBY
-- (64-bit integers on the server) and numbers are written with '%.0f', never tostring (which
-- would print 1.75e+15).

local nb = tonumber(ARGV[1])
local nr = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local id = ARGV[5]
local grace = tonumber(ARGV[6])
local now_us = now * 1000
local now_str = string.format('%.0f', now)
local field_n = 'n:' .. id
local field_t = 't:' .. id

local function int(x)
  return string.format('%.0f', x)
end

local function num(v)
  return tonumber(v) or 0
end

-- Drops the expired reservations of one counter (score = lease end <= now), and clears a
-- reserved amount that no reservation holds any more (the lease structures expired).
local function drop_expired(counter, leases, held)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now_str)
  local exists = redis.call('EXISTS', counter) == 1
  for _, rid in ipairs(expired) do
    local amounts = redis.call('HMGET', held, 'n:' .. rid, 't:' .. rid)
    local n, t = num(amounts[1]), num(amounts[2])
    if exists and n ~= 0 then
      redis.call('HINCRBY', counter, 'reserved_n', int(-n))
    end
    if exists and t ~= 0 then
      redis.call('HINCRBY', counter, 'reserved_t', int(-t))
    end
    redis.call('HDEL', held, 'n:' .. rid, 't:' .. rid)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now_str)
  end
  if exists and redis.call('EXISTS', leases) == 0 then
    local r = redis.call('HMGET', counter, 'reserved_n', 'reserved_t')
    if num(r[1]) ~= 0 or num(r[2]) ~= 0 then
      redis.call('HSET', counter, 'reserved_n', '0', 'reserved_t', '0')
    end
  end
end

local function read_counter(counter)
  local s = redis.call('HMGET', counter, 'spent_n', 'spent_t', 'reserved_n', 'reserved_t')
  return { s[1] or '0', s[2] or '0', s[3] or '0', s[4] or '0' }
end

-- 1. Drop expired reservations from every counter touched.
local dropped = {}
for i = 1, nb do
  local counter = KEYS[3 * i - 2]
  if not dropped[counter] then
    dropped[counter] = true
    drop_expired(counter, KEYS[3 * i - 1], KEYS[3 * i])
  end
end

-- 2. Check every budget charge against the counter as found plus earlier charges of this
--    admission on the same counter.
local refused_kind, refused_index = 0, 0
local found = {}
local pending_n, pending_t = {}, {}
for i = 1, nb do
  local counter = KEYS[3 * i - 2]
  local base = 6 + (i - 1) * 6
  local limit_n = tonumber(ARGV[base + 1])
  local limit_t = tonumber(ARGV[base + 2])
  local nanos = tonumber(ARGV[base + 3])
  local tokens = tonumber(ARGV[base + 4])
  local enforced = ARGV[base + 5] == '1'
  local state = read_counter(counter)
  found[i] = state
  local pn, pt = pending_n[counter] or 0, pending_t[counter] or 0
  if refused_kind == 0 and enforced then
    local over_n = limit_n and num(state[1]) + num(state[3]) + pn + nanos > limit_n
    local over_t = limit_t and num(state[2]) + num(state[4]) + pt + tokens > limit_t
    if over_n or over_t then
      refused_kind, refused_index = 1, i - 1
    end
  end
  pending_n[counter] = pn + nanos
  pending_t[counter] = pt + tokens
end

-- 3. Check every rate charge: GCRA on the bucket's theoretical arrival time (µs).
local stored = {}
local tats = {}
local backlog_found = {}
for j = 1, nr do
  local bucket = KEYS[3 * nb + j]
  local base = 6 + nb * 6 + (j - 1) * 2
  local cost = tonumber(ARGV[base + 1])
  local period = tonumber(ARGV[base + 2])
  if stored[bucket] == nil then
    stored[bucket] = tonumber(redis.call('GET', bucket)) or now_us
  end
  local tat = tats[bucket] or stored[bucket]
  local new_tat = math.max(tat, now_us) + cost
  backlog_found[j] = math.max(stored[bucket] - now_us, 0)
  if refused_kind == 0 and new_tat - now_us > period then
    refused_kind, refused_index = 2, j - 1
  end
  tats[bucket] = new_tat
end

local out = { tostring(refused_kind), tostring(refused_index) }

if refused_kind ~= 0 then
  for i = 1, nb do
    for k = 1, 4 do
      out[#out + 1] = found[i][k]
    end
  end
  for j = 1, nr do
    out[#out + 1] = int(backlog_found[j])
  end
  return out
end

-- 4. Admitted: reserve every budget charge under the reservation id, move every bucket.
local lease_end = int(now + lease)
for i = 1, nb do
  local counter, leases, held = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local base = 6 + (i - 1) * 6
  local nanos, tokens, ttl = ARGV[base + 3], ARGV[base + 4], tonumber(ARGV[base + 6])
  redis.call('HINCRBY', counter, 'reserved_n', nanos)
  redis.call('HINCRBY', counter, 'reserved_t', tokens)
  if ttl >= 0 then
    redis.call('PEXPIRE', counter, math.max(ttl, 1))
  end
  redis.call('ZADD', leases, lease_end, id)
  redis.call('HINCRBY', held, field_n, nanos)
  redis.call('HINCRBY', held, field_t, tokens)
  local last = redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')
  local keep = int(math.max(num(last[2]) - now, 0) + grace)
  redis.call('PEXPIRE', leases, keep)
  redis.call('PEXPIRE', held, keep)
end

local written = {}
for j = 1, nr do
  local bucket = KEYS[3 * nb + j]
  if not written[bucket] then
    written[bucket] = true
    local period = tonumber(ARGV[6 + nb * 6 + (j - 1) * 2 + 2])
    local tat = tats[bucket]
    local keep = math.ceil(math.max(tat - now_us, 0) / 1000) + math.ceil(period / 1000)
    redis.call('SET', bucket, int(tat), 'PX', int(math.max(keep, 1)))
  end
end

for i = 1, nb do
  local state = read_counter(KEYS[3 * i - 2])
  for k = 1, 4 do
    out[#out + 1] = state[k]
  end
end
for j = 1, nr do
  out[#out + 1] = int(tats[KEYS[3 * nb + j]] - now_us)
end
return out
