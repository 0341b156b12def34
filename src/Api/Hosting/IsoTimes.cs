using System.Globalization;
using System.Text.RegularExpressions;

namespace Conveyor.Api.Hosting;

/// <summary>
/// Times a client gives (a move's or purge's <c>faultedBefore</c>/<c>faultedAfter</c>, the audit's <c>since</c>):
/// an ISO 8601 date and time with an explicit offset (<c>Z</c> or <c>±hh:mm</c>), read the same way everywhere, as
/// a job's <c>runAt</c> is. Without an offset ISO 8601 means the reader's local time, which the Api can only guess:
/// 2026-11-28T09:00 is refused, not read as UTC. A date alone or a culture's format such as 12/01/2026 06:00 GMT
/// (the 1st of December or the 12th of January?) is refused too.
/// </summary>
public static partial class IsoTimes
{
    public const string Expected =
        "Must be an ISO 8601 date and time with an offset (Z or ±hh:mm), such as 2026-11-28T06:25:00Z or 2026-11-28T07:25:00+01:00; "
        + "without one the time's zone would be a guess.";

    /// <summary>The instant in UTC: Npgsql refuses a <see cref="DateTimeOffset"/> parameter with any other offset.</summary>
    public static bool TryParse(string? text, out DateTimeOffset time)
    {
        time = default;
        // The shape is checked first: DateTimeOffset.TryParse alone takes a culture's formats and zone names too.
        return text is not null
            && Shape().IsMatch(text)
            && DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal, out time);
    }

    /// <summary>yyyy-MM-ddTHH:mm, optional seconds and up to 7 decimals, then Z or ±hh:mm (the CLI checks the same shape).</summary>
    [GeneratedRegex(@"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,7})?)?(Z|[+-][0-9]{2}:[0-9]{2})\z", RegexOptions.CultureInvariant, matchTimeoutMilliseconds: 1000)]
    private static partial Regex Shape();
}
