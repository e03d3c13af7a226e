-- Reads budget counters (see the key layout in redis.rs). Read-only.
--
-- KEYS, per counter i (1-based): [2i-1] counter hash, [2i] lease sorted set.
-- Returns strings: spent nanos, spent tokens, reserved nanos, reserved tokens per counter;
-- missing reads as 0, and reserved reads as 0 when no reservation holds (lease set gone).

local out = {}
for i = 1, #KEYS / 2 do
  local counter, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local s = redis.call('HMGET', counter, 'spent_n', 'spent_t', 'reserved_n', 'reserved_t')
  local held = redis.call('EXISTS', leases) == 1
  out[#out + 1] = s[1] or '0'
  out[#out + 1] = s[2] or '0'
  out[#out + 1] = held and (s[3] or '0') or '0'
  out[#out + 1] = held and (s[4] or '0') or '0'
end
return out
