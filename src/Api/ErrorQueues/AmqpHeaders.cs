using System.Globalization;
using System.Text;

namespace Conveyor.Api.ErrorQueues;

/// <summary>Reads AMQP header values, which arrive as UTF-8 byte arrays, numbers or timestamps.</summary>
public static class AmqpHeaders
{
    private static readonly long MinUnixSeconds = DateTimeOffset.MinValue.ToUnixTimeSeconds();
    private static readonly long MaxUnixSeconds = DateTimeOffset.MaxValue.ToUnixTimeSeconds();

    public static string? Text(IDictionary<string, object?>? headers, string name) =>
        headers is not null && headers.TryGetValue(name, out var value) ? AsText(value) : null;

    public static int? Number(IDictionary<string, object?>? headers, string name) =>
        int.TryParse(Text(headers, name), NumberStyles.Integer, CultureInfo.InvariantCulture, out var number) ? number : null;

    public static DateTimeOffset? Time(IDictionary<string, object?>? headers, string name) =>
        DateTimeOffset.TryParse(Text(headers, name), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out var time)
            ? time
            : null;

    public static string? AsText(object? value) => value switch
    {
        null => null,
        string text => text,
        byte[] bytes => Encoding.UTF8.GetString(bytes),
        ReadOnlyMemory<byte> memory => Encoding.UTF8.GetString(memory.Span),
        RabbitMQ.Client.AmqpTimestamp timestamp => TimestampText(timestamp.UnixTime),
        IFormattable formattable => formattable.ToString(null, CultureInfo.InvariantCulture),
        System.Collections.IEnumerable => null,
        _ => value.ToString(),
    };

    /// <summary>
    /// An AMQP timestamp (seconds since 1970) as an ISO 8601 time; one no date can hold, such as a producer's milliseconds
    /// (past the year 9999), as its number, which reads as no time. Throwing here made the whole message unreadable, and
    /// a walk keeps an unreadable message without a word: a purge or move of every message left it behind.
    /// </summary>
    private static string TimestampText(long unixSeconds) =>
        unixSeconds >= MinUnixSeconds && unixSeconds <= MaxUnixSeconds
            ? DateTimeOffset.FromUnixTimeSeconds(unixSeconds).ToString("O", CultureInfo.InvariantCulture)
            : unixSeconds.ToString(CultureInfo.InvariantCulture);
}
