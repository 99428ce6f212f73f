-- Applies feature events in order; a script runs alone on the server, so a batch is atomic.
--
-- KEYS: [1] the hash of applied offsets by partition, [2] the populated flag, then six per event:
--   session list, user counters, history list, demographics hash, item counters, event id key.
-- ARGV: [1] the partition ('' = ungated: apply every event), [2] session length, [3] history
--   length, [4] session TTL, [5] state TTL, [6] event id TTL (seconds), then six per event:
--   offset, has id ('1'/'0'), type name, positive ('1'/'0'), item id, session entry (JSON).
--
-- Gated (the owner of a Kafka partition applying its records): a record below the partition's
-- applied offset was applied before and is skipped; a record whose event id was applied in the
-- last id TTL is a retry logged twice and is counted, not applied; the applied offset then moves
-- past the batch. Returns {applied, duplicates}.
local gated = ARGV[1] ~= ''
local done = 0
if gated then
  done = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
end
local upto = done
local session_len, history_len = tonumber(ARGV[2]), tonumber(ARGV[3])
local session_ttl, state_ttl, id_ttl = ARGV[4], ARGV[5], ARGV[6]
local applied, duplicates = 0, 0
for i = 0, (#KEYS - 2) / 6 - 1 do
  local k, a = 2 + i * 6, 6 + i * 6
  local offset = tonumber(ARGV[a + 1])
  if not gated or offset >= done then
    if offset + 1 > upto then
      upto = offset + 1
    end
    local fresh = true
    if gated and ARGV[a + 2] == '1' then
      fresh = redis.call('SET', KEYS[k + 6], '1', 'NX', 'EX', id_ttl) ~= false
    end
    if fresh then
      local sess, cnt, hist, demo, item = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
      local kind, item_id = ARGV[a + 3], ARGV[a + 5]
      redis.call('RPUSH', sess, ARGV[a + 6])
      redis.call('LTRIM', sess, -session_len, -1)
      redis.call('EXPIRE', sess, session_ttl)
      redis.call('HINCRBY', cnt, kind, 1)
      redis.call('EXPIRE', cnt, state_ttl)
      if ARGV[a + 4] == '1' then
        redis.call('LREM', hist, 0, item_id)
        redis.call('RPUSH', hist, item_id)
        redis.call('LTRIM', hist, -history_len, -1)
      end
      -- EXPIRE on a missing key is a no-op, so these renew only what exists.
      redis.call('EXPIRE', hist, state_ttl)
      redis.call('EXPIRE', demo, state_ttl)
      redis.call('HINCRBY', item, kind, 1)
      redis.call('EXPIRE', item, state_ttl)
      applied = applied + 1
    else
      duplicates = duplicates + 1
    end
  end
end
redis.call('SET', KEYS[2], 1)
if gated and upto > done then
  redis.call('HSET', KEYS[1], ARGV[1], upto)
end
return {applied, duplicates}
