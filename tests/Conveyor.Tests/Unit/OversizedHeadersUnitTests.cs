using System.Text;
using Conveyor.Worker.Messaging;
using RabbitMQ.Client;

namespace Conveyor.Tests.Unit;

/// <summary>Header sizes as AMQP writes them, and dropping the largest headers to fit a budget.</summary>
public sealed class OversizedHeadersUnitTests
{
    [Fact]
    public void Content_header_size_is_what_the_client_writes()
    {
        var properties = new BasicProperties
        {
            ContentType = "application/vnd.masstransit+json",
            MessageId = Guid.NewGuid().ToString(),
            CorrelationId = "corrélation",
            DeliveryMode = DeliveryModes.Persistent,
            Timestamp = new AmqpTimestamp(1_700_000_000),
            Headers = new Dictionary<string, object?>
            {
                ["text"] = "héllo",
                ["bytes"] = new byte[] { 0xFF, 0x00, 0x41 },
                ["int"] = 42,
                ["long"] = 42L,
                ["bool"] = true,
                ["double"] = 1.5,
                ["decimal"] = 1.25m,
                ["none"] = null,
                ["time"] = new AmqpTimestamp(1_700_000_000),
                ["table"] = new Dictionary<string, object?> { ["inner"] = "x", ["n"] = 1 },
                ["list"] = new List<object?> { "a", 1, new byte[] { 1, 2 } },
            },
        };

        IAmqpWriteable writeable = properties;
        var buffer = new byte[writeable.GetRequiredBufferSize()];
        // The client writes the property flags and the properties; the frame adds class, weight and body size (12 bytes).
        Assert.Equal(12 + writeable.WriteTo(buffer), AmqpFrame.ContentHeaderBytes(properties));
    }

    [Fact]
    public void The_largest_headers_are_dropped_until_the_rest_fits_and_the_note_names_them()
    {
        var headers = new Dictionary<string, object?>
        {
            ["X-Huge"] = new string('h', 100_000),
            ["X-Big"] = Encoding.UTF8.GetBytes(new string('b', 20_000)),
            ["X-Small"] = "s",
            ["Conveyor-Last-Error"] = new string('e', 30_000),
        };

        var note = OversizedHeaders.DropLargest(headers, 40_000, ["Conveyor-Last-Error"]);

        Assert.Equal("X-Huge (100012 bytes), X-Big (20011 bytes)", note);
        Assert.Equal(["Conveyor-Dropped-Headers", "Conveyor-Last-Error", "X-Small"], headers.Keys.Order(StringComparer.Ordinal));
        Assert.True(AmqpFrame.TableBytes(headers) <= 40_000);
        Assert.Null(OversizedHeaders.DropLargest(headers, 40_000));
    }

    [Fact]
    public void The_note_stays_short_however_many_headers_are_dropped()
    {
        var headers = Enumerable.Range(0, 5_000).ToDictionary(i => $"X-Header-{i:D5}", i => (object?)new string('v', 100));

        var note = OversizedHeaders.DropLargest(headers, 10_000);

        Assert.NotNull(note);
        Assert.True(Encoding.UTF8.GetByteCount(note) <= OversizedHeaders.MaxNoteBytes);
        Assert.EndsWith(" more", note, StringComparison.Ordinal);
        Assert.True(AmqpFrame.TableBytes(headers) <= 10_000);
    }
}
