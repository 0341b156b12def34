using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Api;

/// <summary>
/// A request body the client breaks (shorter than its Content-Length, too slow, a bad chunk size) is the
/// client's fault: answered with the status Kestrel names for it, where the client is still there to read
/// one, and not logged as a server error. Sent over a raw socket, since HttpClient sends no such bodies.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class ClientBodyErrorTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Submit = "/api/jobs/generate-report";
    private const string KestrelCategory = "Microsoft.AspNetCore.Server.Kestrel";

    private readonly CapturedLogs _logs = new();
    private readonly FinishedRequests _finished = new();
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(
            new Dictionary<string, string?>
            {
                ["RateLimiting:Enabled"] = "false",
                // For its "started reading request body" entries.
                ["Logging:LogLevel:" + KestrelCategory] = "Debug",
            },
            builder =>
            {
                builder.Logging.AddProvider(_logs);
                builder.Services.AddSingleton<IStartupFilter>(_finished);
                // Slower than 100 bytes/s after 2 s (the least grace Kestrel's 1 s heartbeat allows) is too slow.
                builder.WebHost.ConfigureKestrel(kestrel =>
                    kestrel.Limits.MinRequestBodyDataRate = new MinDataRate(bytesPerSecond: 100, gracePeriod: TimeSpan.FromSeconds(2)));
            });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    /// <summary>
    /// The client sends part of the body, waits until the request is reading it (else Kestrel may see the
    /// client gone before the read and end the request quietly, the case this does not test), then shuts
    /// its side. The answer, if one gets out before Kestrel resets the connection, is a 400.
    /// </summary>
    [Fact]
    public async Task Bodies_shorter_than_their_content_length_are_400s_where_answered_and_no_error_is_logged()
    {
        // A few, since the read can still be a moment behind the log entry that announces it.
        const int clients = 5;
        for (var sent = 1; sent <= clients; sent++)
        {
            using var socket = await ConnectAsync();
            await SendAsync(socket, Head("Content-Length: 1000") + """{"reportId":""");
            await WaitForBodyReadsAsync(sent);
            socket.Shutdown(SocketShutdown.Send);

            if (await ReadStatusAsync(socket) is { } status)
            {
                Assert.Equal(400, status);
            }
        }

        await _finished.WaitForAsync(clients);
        AssertNoErrorLogged();
    }

    [Fact]
    public async Task A_body_sent_too_slowly_is_a_408_and_no_error_is_logged()
    {
        using var socket = await ConnectAsync();

        await SendAsync(socket, Head("Content-Length: 100000") + """{"reportId":""");

        Assert.Equal(408, await ReadStatusAsync(socket));
        await _finished.WaitForAsync(1);
        AssertNoErrorLogged();
    }

    [Fact]
    public async Task A_bad_chunk_size_is_a_400_and_no_error_is_logged()
    {
        using var socket = await ConnectAsync();

        await SendAsync(socket, Head("Transfer-Encoding: chunked") + "zz\r\n{}\r\n0\r\n\r\n");

        Assert.Equal(400, await ReadStatusAsync(socket));
        await _finished.WaitForAsync(1);
        AssertNoErrorLogged();
    }

    private Task WaitForBodyReadsAsync(int count) =>
        Eventually.AssertAsync(() =>
        {
            Assert.True(_logs.Of(LogLevel.Debug, KestrelCategory).Count(e => e.EventId.Name == "RequestBodyStart") >= count,
                "The request has not started reading its body.");
            return Task.CompletedTask;
        }, TimeSpan.FromSeconds(30));

    private void AssertNoErrorLogged() =>
        Assert.DoesNotContain(_logs.Entries, e => e.Level >= LogLevel.Error);

    private string Head(string framing) =>
        $"POST {Submit} HTTP/1.1\r\nHost: {_api.BaseAddress.Authority}\r\nX-Api-Key: {TestKeys.Admin}\r\n"
        + $"Content-Type: application/json\r\n{framing}\r\n\r\n";

    private async Task<Socket> ConnectAsync()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(_api.BaseAddress.Host, _api.BaseAddress.Port);
        return socket;
    }

    private static async Task SendAsync(Socket socket, string text) =>
        await socket.SendAsync(Encoding.ASCII.GetBytes(text), SocketFlags.None);

    /// <summary>The status code of the answer, or null when the server closed the connection without one (bounded wait).</summary>
    private static async Task<int?> ReadStatusAsync(Socket socket)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var received = new StringBuilder();
        var buffer = new byte[4096];
        while (!received.ToString().Contains("\r\n", StringComparison.Ordinal))
        {
            int read;
            try
            {
                read = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token);
            }
            catch (SocketException exception) when (exception.SocketErrorCode == SocketError.ConnectionReset)
            {
                read = 0;
            }

            if (read == 0)
            {
                Assert.Equal("", received.ToString());
                return null;
            }

            received.Append(Encoding.ASCII.GetString(buffer, 0, read));
        }

        // "HTTP/1.1 400 Bad Request"
        return int.Parse(received.ToString().Split(' ')[1], CultureInfo.InvariantCulture);
    }
}
