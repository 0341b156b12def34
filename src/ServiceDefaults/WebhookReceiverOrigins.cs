using System.Collections.Frozen;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// The origins of <c>Webhooks:Receivers</c>, read one way by the worker, which signs a registered
/// receiver's deliveries with its own secrets and refuses other origins when
/// <c>Webhooks:RequireRegisteredReceivers</c> is set, and by the Api, which then refuses such a job at
/// submission: both take a URL for the same receiver's (<see cref="WebhookOrigin"/>) and refuse the
/// same configuration at start.
/// </summary>
public sealed class WebhookReceiverOrigins
{
    /// <summary>The setting the entries are read from.</summary>
    public const string Setting = "Webhooks:Receivers";

    private readonly FrozenDictionary<string, int> _entries;

    private WebhookReceiverOrigins(Dictionary<string, int> entries) =>
        _entries = entries.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Reads each entry's origin, by the entry's index; an empty entry (null) is left out for the caller
    /// to report. <paramref name="errors"/> says, by index, why an entry's origin is not readable or is
    /// an earlier entry's, naming its setting. Such an entry matches no URL (the first entry of an origin
    /// keeps it); options validated at start have none.
    /// </summary>
    public static WebhookReceiverOrigins Read(IReadOnlyList<string?> origins, out IReadOnlyDictionary<int, string> errors)
    {
        var entries = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        var problems = new Dictionary<int, string>();
        for (var i = 0; i < origins.Count; i++)
        {
            if (origins[i] is not { } value)
            {
                continue;
            }

            var setting = $"{Setting}:{i}:Origin";
            if (WebhookOrigin.Read(value, out var origin) is { } problem)
            {
                problems[i] = $"{setting} {problem}.";
            }
            else if (!entries.TryAdd(origin, i))
            {
                problems[i] = $"{setting} is {origin}, as {Setting}:{entries[origin]}:Origin: an origin has one receiver and one set of secrets.";
            }
        }

        errors = problems;
        return new WebhookReceiverOrigins(entries);
    }

    /// <summary>The index of the entry whose origin <paramref name="url"/> (absolute, http or https) has; null when none has.</summary>
    public int? IndexOf(Uri url) => _entries.TryGetValue(WebhookOrigin.Of(url), out var index) ? index : null;
}
