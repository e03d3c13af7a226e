-- Writes (or deletes) one admin record if it is as the write expects, bumping the version and
-- appending the audit event, all in this one script (see the key layout in redis.rs).
--
-- KEYS[1]: version (string), [2]: records (hash), [3]: revisions (hash), [4]: audit log (list).
-- ARGV[1]: the record's field (`<kind>/<id>`); ARGV[2]: `absent`, or the expected revision in
-- decimal; ARGV[3]: the audit event (JSON); ARGV[4], when given: the record (JSON), else the
-- record is deleted.
--
-- Returns strings: {'written', new version}, {'conflict', current revision or ''} (nothing
-- changed), or {'corrupt', why} (a key holds something this script did not write; nothing
-- changed). Revisions are compared as the strings INCR left, never as Lua numbers.

local kinds = {'string', 'hash', 'hash', 'list'}
for i = 1, 4 do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= kinds[i] then
    return {'corrupt', KEYS[i] .. ' is a ' .. found .. ', not a ' .. kinds[i]}
  end
end
local version = redis.call('GET', KEYS[1])
if version and not string.match(version, '^%d+$') then
  return {'corrupt', KEYS[1] .. ' holds ' .. version .. ', not a version'}
end

local field = ARGV[1]
local current = redis.call('HGET', KEYS[3], field)
if ARGV[2] == 'absent' then
  if current then
    return {'conflict', current}
  end
elseif current ~= ARGV[2] then
  return {'conflict', current or ''}
end

redis.call('INCR', KEYS[1])
version = redis.call('GET', KEYS[1])
if #ARGV >= 4 then
  redis.call('HSET', KEYS[2], field, ARGV[4])
  redis.call('HSET', KEYS[3], field, version)
else
  redis.call('HDEL', KEYS[2], field)
  redis.call('HDEL', KEYS[3], field)
end
redis.call('RPUSH', KEYS[4], ARGV[3])
return {'written', version}
