using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Conveyor.Tests.Fakes;

/// <summary>
/// A webhook receiver on a loopback port that answers every request with a redirect whose
/// <c>Location</c> is written byte for byte as given: a real server (Kestrel) refuses to send a control
/// character in a header, which a receiver, or whatever stands in front of it, may still send.
/// </summary>
public sealed class RawRedirectReceiver : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;
    private readonly int _status;
    private readonly byte[] _location;
    private int _requests;

    private RawRedirectReceiver(int status, byte[] location)
    {
        _status = status;
        _location = location;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _accepting = AcceptAsync();
    }

    public Uri BaseAddress => new($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}/");

    /// <summary>Requests answered so far.</summary>
    public int Requests => Volatile.Read(ref _requests);

    public Uri Url(string path = "/hooks") => new(BaseAddress, path);

    public static RawRedirectReceiver Start(int status, byte[] location) => new(status, location);

    private async Task AcceptAsync()
    {
        try
        {
            while (true)
            {
                var client = await _listener.AcceptTcpClientAsync(_stop.Token);
                _ = AnswerAsync(client);
            }
        }
        catch (Exception exception) when (exception is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // Stopped.
        }
    }

    private async Task AnswerAsync(TcpClient client)
    {
        using (client)
        {
            try
            {
                var stream = client.GetStream();
                await RawRequests.ReadAsync(stream, _stop.Token);
                Interlocked.Increment(ref _requests);
                var head = Encoding.ASCII.GetBytes($"HTTP/1.1 {_status} Redirect\r\nLocation: ");
                var tail = Encoding.ASCII.GetBytes("\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                await stream.WriteAsync(head, _stop.Token);
                await stream.WriteAsync(_location, _stop.Token);
                await stream.WriteAsync(tail, _stop.Token);
                await stream.FlushAsync(_stop.Token);
            }
            catch (Exception exception) when (exception is OperationCanceledException or IOException or SocketException)
            {
                // The sender went away, or the receiver is stopping.
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _accepting;
        _stop.Dispose();
    }
}
