using System.Text;
using Conveyor.Worker.Webhooks;

namespace Conveyor.Tests.Unit;

/// <summary>
/// What the start of a webhook's answer said, read off the connection in whatever pieces it arrives
/// (the integration tests send each answer in one write, which loopback delivers whole).
/// </summary>
public sealed class AnswerStartTests
{
    private static readonly object Connection = new();

    [Theory]
    [InlineData("HTTP/1.1 200 OK\r\nX: y\r\n\r\n", 200)]
    [InlineData("HTTP/1.0 204 \n\n", 204)]
    [InlineData("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\n", 201)]
    [InlineData("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 400 Bad Request\r\n", 400)]
    public void The_final_status_line_is_read_in_pieces_of_any_size(string answer, int status)
    {
        var bytes = Encoding.ASCII.GetBytes(answer);
        foreach (var piece in new[] { 1, 2, 5, bytes.Length })
        {
            var start = Written();
            foreach (var chunk in bytes.Chunk(piece))
            {
                start.Observe(Connection, chunk);
            }

            Assert.Equal(status, start.StatusCode);
            Assert.Null(start.NotHttp);
        }
    }

    [Fact]
    public void An_answer_cut_off_in_its_status_line_has_no_status()
    {
        var start = Written();
        start.Observe(Connection, "HTTP/1.1 20"u8);

        Assert.Null(start.StatusCode);
        Assert.Null(start.NotHttp);
    }

    [Fact]
    public void Bytes_that_do_not_begin_as_http_are_shown_printable_and_cut_short()
    {
        var start = Written();
        start.Observe(Connection, "HT"u8);
        start.Observe(Connection, [(byte)'X', 0x1B, .. Enumerable.Repeat((byte)'a', 100)]);

        Assert.Null(start.StatusCode);
        Assert.Equal(@"HTX\u001B" + new string('a', AnswerStart.MaxShownBytes - 4), start.NotHttp);
    }

    [Fact]
    public void Only_the_connection_the_request_was_last_written_on_is_read()
    {
        // A proxy's tunnel: its answer to CONNECT (and the TLS bytes after it) arrive on the proxy's
        // connection; the receiver's answer on the tunnelled one, where the request was written last.
        var proxy = new object();
        var tunnelled = new object();
        var start = AnswerStart.Begin();
        start.WrittenOn(proxy);
        start.Observe(proxy, "HTTP/1.1 200 Connection established\r\n\r\n"u8);
        Assert.Equal(200, start.StatusCode);

        start.WrittenOn(tunnelled);
        start.Observe(proxy, [0x17, 0x03, 0x03]);
        start.Observe(tunnelled, "HTTP/1.1 503 Service Unavailable\r\n"u8);

        Assert.Equal(503, start.StatusCode);
        Assert.Null(start.NotHttp);
    }

    private static AnswerStart Written()
    {
        var start = AnswerStart.Begin();
        start.WrittenOn(Connection);
        return start;
    }
}
