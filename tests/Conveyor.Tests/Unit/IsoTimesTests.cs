using Conveyor.Api.Hosting;

namespace Conveyor.Tests.Unit;

/// <summary>The times the Api takes in a move's filter and the audit's <c>since</c> (<see cref="IsoTimes"/>).</summary>
public sealed class IsoTimesTests
{
    [Theory]
    [InlineData("2026-11-28T06:25:00Z", "2026-11-28T06:25:00.0000000+00:00")]
    [InlineData("2026-11-28T07:25:00+01:00", "2026-11-28T06:25:00.0000000+00:00")]
    [InlineData("2026-11-28T01:55:00.1234567-04:30", "2026-11-28T06:25:00.1234567+00:00")]
    [InlineData("2026-11-28T06:25Z", "2026-11-28T06:25:00.0000000+00:00")]
    public void An_iso_8601_date_and_time_with_an_offset_is_read_as_its_instant_in_utc(string text, string utc)
    {
        Assert.True(IsoTimes.TryParse(text, out var time));
        Assert.Equal((DateTimeOffset.Parse(utc, System.Globalization.CultureInfo.InvariantCulture), TimeSpan.Zero), (time, time.Offset));
    }

    [Theory]
    // No offset: ISO 8601 reads it as local time, which the Api cannot know; it is not taken for UTC.
    [InlineData("2026-11-28T09:00")]
    [InlineData("2026-11-28T09:00:00")]
    [InlineData("2026-11-28T09:00:00.5")]
    // A culture's format, even one with a 'T' in it: the 1st of December or the 12th of January?
    [InlineData("12/01/2026 06:00 GMT")]
    [InlineData("Tue, 01 Dec 2026 06:00:00 GMT")]
    [InlineData("12/01/2026T06:00:00Z")]
    [InlineData("2026-12-01")]
    [InlineData("2026-11-28 06:25:00Z")]
    [InlineData("2026-11-28T06:25:00+0100")]
    [InlineData("2026-13-01T00:00:00Z")]
    [InlineData("2026-11-28T06:25:00Z\n")]
    [InlineData("yesterday")]
    [InlineData("")]
    [InlineData(null)]
    public void Anything_else_is_refused(string? text)
    {
        Assert.False(IsoTimes.TryParse(text, out _));
    }
}
