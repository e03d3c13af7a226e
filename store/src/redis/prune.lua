-- Deletes spend-log records older than a time among the first ARGV[2] records of the list.
-- Records are appended in about time order (a request is logged when it ends), so old records
-- sit at the head; looking at a window rather than stopping at the first recent record also
-- catches those written a little out of order.
-- KEYS[1]: the spend list. ARGV[1]: before_ms. ARGV[2]: the window (records looked at).
-- Returns {deleted, looked at}. Never deletes a record it cannot read.
local before = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local head = redis.call('LRANGE', KEYS[1], 0, window - 1)
local removed = 0
for _, line in ipairs(head) do
  local ok, record = pcall(cjson.decode, line)
  if ok and type(record) == 'table' and type(record.time_ms) == 'number'
      and record.time_ms < before then
    removed = removed + redis.call('LREM', KEYS[1], 1, line)
  end
end
return {removed, #head}
