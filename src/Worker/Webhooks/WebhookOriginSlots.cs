using Conveyor.ServiceDefaults;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// The webhook deliveries this worker has in flight, per receiver origin (scheme, host and port), each at
/// most <see cref="WebhookOptions.MaxConcurrentPerOrigin"/> (<see cref="WebhookOriginLimitFilter"/>).
/// </summary>
public sealed class WebhookOriginSlots
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, int> _inFlight = new(StringComparer.Ordinal);

    /// <summary>
    /// The origin a delivery to <paramref name="url"/> counts against: its scheme, host and port, as a browser
    /// compares origins, written as <c>Webhooks:Receivers</c> compares them (<see cref="WebhookOrigin.Of"/>), so a
    /// host's final dot, which names the same host, does not make a second origin with slots of its own.
    /// </summary>
    public static string OriginOf(Uri url) => url.IsAbsoluteUri ? WebhookOrigin.Of(url) : "";

    /// <summary>
    /// Takes a slot of <paramref name="origin"/> if fewer than <paramref name="limit"/> are taken, or whatever
    /// the count when <paramref name="overLimit"/>; false (nothing taken) otherwise. Each slot taken is given
    /// back with <see cref="Release"/>.
    /// </summary>
    public bool TryTake(string origin, int limit, bool overLimit = false)
    {
        lock (_lock)
        {
            var taken = _inFlight.GetValueOrDefault(origin);
            if (taken >= limit && !overLimit)
            {
                return false;
            }

            _inFlight[origin] = taken + 1;
            return true;
        }
    }

    /// <summary>Gives back a slot <see cref="TryTake"/> took; an origin with none left is forgotten, so the map holds only origins in flight.</summary>
    public void Release(string origin)
    {
        lock (_lock)
        {
            var taken = _inFlight.GetValueOrDefault(origin);
            if (taken <= 1)
            {
                _inFlight.Remove(origin);
            }
            else
            {
                _inFlight[origin] = taken - 1;
            }
        }
    }
}
