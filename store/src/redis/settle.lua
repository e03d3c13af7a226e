-- One settlement, atomically (see the key layout in redis.rs).
--
-- KEYS, per budget i (1-based): [3i-2] counter hash, [3i-1] lease sorted set, [3i] held hash;
--   then one GCRA bucket string per rate adjustment; then the settled marker of the
--   reservation.
-- ARGV: [1] budgets, [2] rate adjustments, [3] now (ms), [4] reservation id, [5] how long the
--   settled marker is kept (ms); then 3 per budget: actual nanos, actual tokens, counter TTL in
--   ms (-1 = never expires); then 2 per rate adjustment: adjust (µs), period (µs).
--
-- Returns 1 when applied, 0 when the reservation was already settled (nothing changed).
--
-- A settlement is applied once per reservation id: the marker is set first, and when it was
-- already there (a retry of a settlement that was applied, e.g. whose reply timed out) the
-- script changes nothing. Otherwise a reservation still held is removed and its amounts (as
-- the admission stored them) leave `reserved`; the actual amounts are added to `spent` whether
-- or not it was still held.

local nb = tonumber(ARGV[1])
local nr = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local id = ARGV[4]
local now_us = now * 1000

if not redis.call('SET', KEYS[3 * nb + nr + 1], '1', 'NX', 'PX', ARGV[5]) then
  return 0
end
local field_n = 'n:' .. id
local field_t = 't:' .. id

local function int(x)
  return string.format('%.0f', x)
end

local function num(v)
  return tonumber(v) or 0
end

for i = 1, nb do
  local counter, leases, held = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local base = 5 + (i - 1) * 3
  local actual_n, actual_t, ttl = ARGV[base + 1], ARGV[base + 2], tonumber(ARGV[base + 3])
  local exists = redis.call('EXISTS', counter) == 1
  if redis.call('ZREM', leases, id) == 1 then
    local amounts = redis.call('HMGET', held, field_n, field_t)
    local n, t = num(amounts[1]), num(amounts[2])
    redis.call('HDEL', held, field_n, field_t)
    if exists and n ~= 0 then
      redis.call('HINCRBY', counter, 'reserved_n', int(-n))
    end
    if exists and t ~= 0 then
      redis.call('HINCRBY', counter, 'reserved_t', int(-t))
    end
  end
  if exists and redis.call('EXISTS', leases) == 0 then
    -- No reservation holds: nothing is reserved (clears what expired lease structures left).
    local r = redis.call('HMGET', counter, 'reserved_n', 'reserved_t')
    if num(r[1]) ~= 0 or num(r[2]) ~= 0 then
      redis.call('HSET', counter, 'reserved_n', '0', 'reserved_t', '0')
    end
  end
  if num(actual_n) ~= 0 or num(actual_t) ~= 0 then
    redis.call('HINCRBY', counter, 'spent_n', actual_n)
    redis.call('HINCRBY', counter, 'spent_t', actual_t)
    exists = true
  end
  if exists and ttl >= 0 then
    redis.call('PEXPIRE', counter, math.max(ttl, 1))
  end
end

-- Rate adjustments move the TAT from where it stands, or from now when the bucket has drained
-- (a drained bucket's TAT in the past is the same as now).
for j = 1, nr do
  local bucket = KEYS[3 * nb + j]
  local base = 5 + nb * 3 + (j - 1) * 2
  local adjust = tonumber(ARGV[base + 1])
  local period = tonumber(ARGV[base + 2])
  if adjust ~= 0 then
    local tat = math.max(tonumber(redis.call('GET', bucket)) or now_us, now_us) + adjust
    if tat > now_us then
      local keep = math.ceil((tat - now_us) / 1000) + math.ceil(period / 1000)
      redis.call('SET', bucket, int(tat), 'PX', int(math.max(keep, 1)))
    else
      redis.call('DEL', bucket)
    end
  end
end

return 1
