using System.Globalization;

namespace Conveyor.Api.Hosting;

/// <summary>
/// Times a client gives (a move's or purge's <c>faultedBefore</c>/<c>faultedAfter</c>, the audit's <c>since</c>):
/// an ISO 8601 date and time, with any offset (none means UTC), read the same way everywhere. A date alone or a
/// culture's format such as 12/01/2026 (the 1st of December or the 12th of January?) is refused.
/// </summary>
internal static class IsoTimes
{
    public const string Expected = "Must be an ISO 8601 date and time, such as 2026-11-28T06:25:00Z.";

    /// <summary>The instant in UTC: Npgsql refuses a <see cref="DateTimeOffset"/> parameter with any other offset.</summary>
    public static bool TryParse(string? text, out DateTimeOffset time)
    {
        time = default;
        return text is not null
            && text.Contains('T', StringComparison.Ordinal)
            && DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out time);
    }
}
