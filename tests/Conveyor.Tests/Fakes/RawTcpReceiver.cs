using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Conveyor.Tests.Fakes;

/// <summary>
/// A webhook URL's port on loopback that is no well-behaved HTTP server: it answers each connection as a
/// test says, byte for byte (another protocol, an answer cut off, a reset), or speaks TLS with a
/// self-signed certificate a test makes (expired, for another host, or only trusted by no one). A real
/// server (Kestrel) would not answer so.
/// </summary>
public sealed class RawTcpReceiver : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Func<NetworkStream, CancellationToken, Task> _answer;
    private readonly Task _accepting;
    private int _connections;
    private int _requests;

    private RawTcpReceiver(Func<NetworkStream, CancellationToken, Task> answer)
    {
        _answer = answer;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _accepting = AcceptAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    /// <summary>Connections accepted so far.</summary>
    public int Connections => Volatile.Read(ref _connections);

    public Uri Url(string scheme = "http", string path = "/hooks") => new($"{scheme}://127.0.0.1:{Port}{path}");

    /// <summary>Answers each connection with <paramref name="answer"/>; the connection is closed when it returns.</summary>
    public static RawTcpReceiver Start(Func<NetworkStream, CancellationToken, Task> answer) => new(answer);

    /// <summary>Reads a whole request, writes <paramref name="bytes"/> and closes the connection.</summary>
    public static RawTcpReceiver AnsweringWith(byte[] bytes) => new(async (stream, cancellationToken) =>
    {
        await RawRequests.ReadAsync(stream, cancellationToken);
        await stream.WriteAsync(bytes, cancellationToken);
        await stream.FlushAsync(cancellationToken);
    });

    /// <summary>
    /// Reads the first bytes a client sends (a request, or a TLS ClientHello) and resets the connection
    /// (an RST, as a crashing server or a middlebox sends it).
    /// </summary>
    public static RawTcpReceiver ResettingOnFirstBytes() => new(async (stream, cancellationToken) =>
    {
        var buffer = new byte[4096];
        _ = await stream.ReadAsync(buffer, cancellationToken);
        stream.Socket.LingerState = new LingerOption(true, 0);
        stream.Socket.Close();
    });

    /// <summary>
    /// A TLS server presenting <paramref name="certificate"/> (from <see cref="SelfSignedCertificate"/>). A client
    /// that gets past the handshake has its request counted in <see cref="Requests"/> and is answered 204.
    /// </summary>
    public static RawTcpReceiver WithCertificate(X509Certificate2 certificate)
    {
        RawTcpReceiver? receiver = null;
        receiver = new(async (stream, cancellationToken) =>
        {
            await using var tls = new SslStream(stream);
            try
            {
                await tls.AuthenticateAsServerAsync(
                    new SslServerAuthenticationOptions { ServerCertificate = certificate }, cancellationToken);
            }
            catch (AuthenticationException)
            {
                return; // The client refused the certificate.
            }

            await RawRequests.ReadAsync(tls, cancellationToken);
            Interlocked.Increment(ref receiver!._requests);
            await tls.WriteAsync("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"u8.ToArray(), cancellationToken);
        });
        return receiver;
    }

    /// <summary>Requests read past a TLS handshake (<see cref="WithCertificate"/>): a client that accepted the certificate.</summary>
    public int Requests => Volatile.Read(ref _requests);

    /// <summary>
    /// A self-signed certificate (so trusted by no one) valid from <paramref name="notBefore"/> to
    /// <paramref name="notAfter"/>, for <paramref name="dnsName"/>, or for 127.0.0.1 when it is null.
    /// </summary>
    public static X509Certificate2 SelfSignedCertificate(string? dnsName, DateTimeOffset notBefore, DateTimeOffset notAfter)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN={dnsName ?? "127.0.0.1"}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var names = new SubjectAlternativeNameBuilder();
        if (dnsName is null)
        {
            names.AddIpAddress(IPAddress.Loopback);
        }
        else
        {
            names.AddDnsName(dnsName);
        }

        request.CertificateExtensions.Add(names.Build());
        using var created = request.CreateSelfSigned(notBefore, notAfter);
        // Through PKCS #12, so that the private key is usable by SslStream on every platform.
        return X509CertificateLoader.LoadPkcs12(created.Export(X509ContentType.Pfx), null);
    }

    private async Task AcceptAsync()
    {
        try
        {
            while (true)
            {
                var client = await _listener.AcceptTcpClientAsync(_stop.Token);
                Interlocked.Increment(ref _connections);
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
                await _answer(client.GetStream(), _stop.Token);
            }
            catch (Exception exception) when (exception is OperationCanceledException or IOException or SocketException or ObjectDisposedException)
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
