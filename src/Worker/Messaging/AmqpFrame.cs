using System.Collections;
using System.Text;
using RabbitMQ.Client;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Sizes as AMQP 0-9-1 puts them on the wire. A message's properties, its headers among them, travel
/// in one content-header frame, which must fit in the connection's negotiated <c>frame_max</c>
/// (RabbitMQ: 131,072 bytes unless configured otherwise); the body is split over as many frames as it
/// needs. A content header that does not fit is no error of the publish alone: RabbitMQ closes the
/// whole connection (<c>FRAME_ERROR</c>), with every channel and consumer on it.
/// </summary>
public static class AmqpFrame
{
    /// <summary>RabbitMQ's <c>frame_max</c> when neither side asks for less.</summary>
    public const uint DefaultFrameMax = 131_072;

    /// <summary>
    /// Room kept for the headers the client adds itself when it publishes (the publish sequence
    /// number under confirms, the trace context when tracing is on), which the caller does not see.
    /// </summary>
    public const int ClientHeaderAllowance = 1_024;

    /// <summary>Frame type, channel, payload size and frame-end octet around every frame's payload.</summary>
    private const int FrameOverhead = 8;

    /// <summary>A content header's class id, weight, body size and property flags, before the properties.</summary>
    private const int ContentHeaderFixed = 14;

    /// <summary>The longest short string (names, routing keys, most properties).</summary>
    public const int MaxShortString = 255;

    /// <summary>
    /// The most a content header may take on a connection with <paramref name="frameMax"/>, less
    /// <see cref="ClientHeaderAllowance"/>; 0 is "no limit" in AMQP.
    /// </summary>
    public static long ContentHeaderBudget(uint frameMax) =>
        frameMax == 0 ? long.MaxValue : (long)frameMax - FrameOverhead - ClientHeaderAllowance;

    /// <summary>The content-header frame payload of a message with <paramref name="properties"/>.</summary>
    public static long ContentHeaderBytes(IReadOnlyBasicProperties properties) =>
        ContentHeaderFixed + PropertiesWithoutHeaders(properties) + (properties.IsHeadersPresent() ? 4 + TableBytes(properties.Headers) : 0);

    /// <summary>Every property but the header table.</summary>
    public static long PropertiesWithoutHeaders(IReadOnlyBasicProperties properties)
    {
        long bytes = 0;
        bytes += properties.IsContentTypePresent() ? ShortString(properties.ContentType) : 0;
        bytes += properties.IsContentEncodingPresent() ? ShortString(properties.ContentEncoding) : 0;
        bytes += properties.IsDeliveryModePresent() ? 1 : 0;
        bytes += properties.IsPriorityPresent() ? 1 : 0;
        bytes += properties.IsCorrelationIdPresent() ? ShortString(properties.CorrelationId) : 0;
        bytes += properties.IsReplyToPresent() ? ShortString(properties.ReplyTo) : 0;
        bytes += properties.IsExpirationPresent() ? ShortString(properties.Expiration) : 0;
        bytes += properties.IsMessageIdPresent() ? ShortString(properties.MessageId) : 0;
        bytes += properties.IsTimestampPresent() ? 8 : 0;
        bytes += properties.IsTypePresent() ? ShortString(properties.Type) : 0;
        bytes += properties.IsUserIdPresent() ? ShortString(properties.UserId) : 0;
        bytes += properties.IsAppIdPresent() ? ShortString(properties.AppId) : 0;
        bytes += properties.IsClusterIdPresent() ? ShortString(properties.ClusterId) : 0;
        return bytes;
    }

    /// <summary>The entries of a field table (without the table's own 4-byte length).</summary>
    public static long TableBytes<TValue>(IEnumerable<KeyValuePair<string, TValue>>? entries)
    {
        long bytes = 0;
        foreach (var (name, value) in entries ?? [])
        {
            bytes += EntryBytes(name, value);
        }

        return bytes;
    }

    /// <summary>One field-table entry: its name as a short string, a type octet and the value.</summary>
    public static long EntryBytes(string name, object? value) => ShortString(name) + 1 + ValueBytes(value);

    /// <summary>True when <paramref name="text"/> fits in a short string.</summary>
    public static bool IsShortString(string? text) => text is null || Encoding.UTF8.GetByteCount(text) <= MaxShortString;

    private static long ShortString(string? text) => 1 + (text is null ? 0 : Encoding.UTF8.GetByteCount(text));

    // What RabbitMQ.Client writes for each .NET type; anything else is counted as the text it would
    // most likely become, which only a value that cannot be sent at all gets wrong.
    private static long ValueBytes(object? value) => value switch
    {
        null => 0,
        string text => 4 + Encoding.UTF8.GetByteCount(text),
        byte[] bytes => 4 + bytes.Length,
        BinaryTableValue binary => 4 + binary.Bytes.Length,
        bool or byte or sbyte => 1,
        short or ushort => 2,
        int or uint or float => 4,
        long or ulong or double or AmqpTimestamp => 8,
        decimal => 5,
        IDictionary<string, object?> table => 4 + TableBytes(table),
        IList list => 4 + ListBytes(list),
        _ => 4 + Encoding.UTF8.GetByteCount(value.ToString() ?? string.Empty),
    };

    private static long ListBytes(IList list)
    {
        long bytes = 0;
        foreach (var item in list)
        {
            bytes += 1 + ValueBytes(item);
        }

        return bytes;
    }
}
