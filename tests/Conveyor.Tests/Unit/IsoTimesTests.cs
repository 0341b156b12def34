using Conveyor.Api.Hosting;
using Conveyor.Cli.Commands;

namespace Conveyor.Tests.Unit;

/// <summary>
/// The times the Api takes in a move's filter and the audit's <c>since</c> (<see cref="IsoTimes"/>), and the CLI's
/// check of the same shape before it sends one (<see cref="IsoTime"/>), held to the same samples.
/// </summary>
public sealed class IsoTimesTests
{
    /// <summary>Each sample the Api takes, with the instant in UTC it reads.</summary>
    public static TheoryData<string, string> Taken => new()
    {
        { "2026-11-28T06:25:00Z", "2026-11-28T06:25:00.0000000+00:00" },
        { "2026-11-28T07:25:00+01:00", "2026-11-28T06:25:00.0000000+00:00" },
        { "2026-11-28T01:55:00.1234567-04:30", "2026-11-28T06:25:00.1234567+00:00" },
        { "2026-11-28T06:25Z", "2026-11-28T06:25:00.0000000+00:00" },
    };

    public static TheoryData<string> Refused =>
    [
        // No offset: ISO 8601 reads it as local time, which the Api cannot know; it is not taken for UTC.
        "2026-11-28T09:00",
        "2026-11-28T09:00:00",
        "2026-11-28T09:00:00.5",
        // A culture's format, even one with a 'T' in it: the 1st of December or the 12th of January?
        "12/01/2026 06:00 GMT",
        "Tue, 01 Dec 2026 06:00:00 GMT",
        "12/01/2026T06:00:00Z",
        "2026-12-01",
        "2026-11-28 06:25:00Z",
        "2026-11-28T06:25:00+0100",
        "2026-13-01T00:00:00Z",
        "2026-11-28T06:25:00Z\n",
        "yesterday",
        "",
    ];

    [Theory]
    [MemberData(nameof(Taken))]
    public void An_iso_8601_date_and_time_with_an_offset_is_read_as_its_instant_in_utc(string text, string utc)
    {
        Assert.True(IsoTimes.TryParse(text, out var time));
        Assert.Equal((DateTimeOffset.Parse(utc, System.Globalization.CultureInfo.InvariantCulture), TimeSpan.Zero), (time, time.Offset));
    }

    [Theory]
    [MemberData(nameof(Refused))]
    [InlineData(null)]
    public void Anything_else_is_refused(string? text)
    {
        Assert.False(IsoTimes.TryParse(text, out _));
    }

    /// <summary>The CLI keeps its own copy of the shape (see <see cref="IsoTime"/> for why): it takes and refuses the same samples.</summary>
    [Theory]
    [MemberData(nameof(Taken))]
    public void The_cli_takes_what_the_api_takes(string text, string utc)
    {
        Assert.True(IsoTime.Check(("--since", text)).Successful, $"{text} ({utc})");
    }

    [Theory]
    [MemberData(nameof(Refused))]
    public void The_cli_refuses_what_the_api_refuses(string text)
    {
        Assert.False(IsoTime.Check(("--since", text)).Successful);
    }
}
