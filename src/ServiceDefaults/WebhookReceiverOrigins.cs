using System.Collections.Frozen;
using Microsoft.Extensions.Configuration;

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
    /// <param name="entries">Each entry's setting as configured (<see cref="EntrySettings"/>); see <see cref="EntrySetting"/>.</param>
    public static WebhookReceiverOrigins Read(IReadOnlyList<string?> origins, out IReadOnlyDictionary<int, string> errors, IReadOnlyList<string>? entries = null)
    {
        var read = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        var problems = new Dictionary<int, string>();
        for (var i = 0; i < origins.Count; i++)
        {
            if (origins[i] is not { } value)
            {
                continue;
            }

            var setting = $"{EntrySetting(entries, origins.Count, i)}:Origin";
            if (WebhookOrigin.Read(value, out var origin) is { } problem)
            {
                problems[i] = $"{setting} {problem}.";
            }
            else if (!read.TryAdd(origin, i))
            {
                problems[i] = $"{setting} is {origin}, as {EntrySetting(entries, origins.Count, read[origin])}:Origin: an origin has one receiver and one set of secrets.";
            }
        }

        errors = problems;
        return new WebhookReceiverOrigins(read);
    }

    /// <summary>
    /// The setting of each entry under <see cref="Setting"/> in <paramref name="configuration"/>, as written
    /// (<c>Webhooks:Receivers:5</c>, <c>Webhooks:Receivers:acme</c>), in the order .NET binds the entries into an array:
    /// one after another, whatever their keys, so that the entry configured as <c>5</c>, with none before it, is the
    /// array's first.
    /// </summary>
    public static string[] EntrySettings(IConfiguration configuration) =>
        [.. configuration.GetSection(Setting).GetChildren().Select(entry => $"{Setting}:{entry.Key}")];

    /// <summary>
    /// How an error names the bound entry at <paramref name="index"/> of <paramref name="count"/>: by its setting as
    /// written (<paramref name="entries"/>), so that the operator finds it; by its index when the settings are not known
    /// or do not match the entries one for one.
    /// </summary>
    public static string EntrySetting(IReadOnlyList<string>? entries, int count, int index) =>
        entries is { } settings && settings.Count == count ? settings[index] : $"{Setting}:{index}";

    /// <summary>The index of the entry whose origin <paramref name="url"/> (absolute, http or https) has; null when none has.</summary>
    public int? IndexOf(Uri url) => _entries.TryGetValue(WebhookOrigin.Of(url), out var index) ? index : null;
}
