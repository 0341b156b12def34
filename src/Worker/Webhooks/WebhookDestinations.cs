using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Conveyor.ServiceDefaults;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// Keeps webhook deliveries off the worker's own networks. A webhook URL comes from whoever submits
/// the job; without this, a caller with the <c>jobs:publish</c> scope could make the worker POST to
/// the cloud metadata service, the pod's loopback, the cluster's services or anything else only the
/// worker can reach (server-side request forgery). The check runs when the connection is made, on the
/// addresses the host name resolved to, so a name that resolves to a public address at submission
/// and to an internal one at delivery (DNS rebinding) is refused too. Redirects are not followed, and
/// no HTTP proxy is used, since a proxy would hide the destination from the check.
/// <see cref="WebhookOptions.AllowPrivateNetworks"/> turns the check off (a receiver inside the
/// cluster, local development, an egress proxy that enforces its own policy).
/// </summary>
public static class WebhookDestinations
{
    /// <summary>
    /// The webhook client's handler: public destinations only, unless private networks are allowed. Each
    /// connection shows the start of its answers to the delivery they answer (<see cref="AnswerStart"/>),
    /// and a certificate its TLS handshake refuses tells that delivery why (<see cref="ReceiverCertificate"/>,
    /// which decides as the default validation does).
    /// </summary>
    public static SocketsHttpHandler Handler(bool allowPrivateNetworks) => new()
    {
        AllowAutoRedirect = false,
        UseProxy = allowPrivateNetworks,
        ConnectCallback = allowPrivateNetworks ? null : ConnectToPublicAddressAsync,
        PlaintextStreamFilter = (context, _) => ValueTask.FromResult<Stream>(new AnswerStartStream(context.PlaintextStream)),
        SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = ReceiverCertificate.Validate },
    };

    /// <summary>Resolves the host, refuses it if any of its addresses is not public, else connects.</summary>
    private static async ValueTask<Stream> ConnectToPublicAddressAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var endpoint = context.DnsEndPoint;
        var addresses = await PublicAddressesAsync(endpoint.Host, cancellationToken);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(addresses, endpoint.Port, cancellationToken);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The addresses a webhook host names, each of them public, or <see cref="WebhookDestinationRefusedException"/>
    /// naming one that is not.
    /// </summary>
    internal static async Task<IPAddress[]> PublicAddressesAsync(string host, CancellationToken cancellationToken)
    {
        if (NetworkAddresses.IsLocalHostName(host))
        {
            // Loopback whatever DNS says (RFC 6761), and a resolver may not answer for such a name at all,
            // which would read as a network failure, retried and redelivered for an hour.
            throw new WebhookDestinationRefusedException(host, IPAddress.Loopback);
        }

        // An address written with a final dot ("10.0.0.5.", "93.184.215.14.") is that address, as "localhost." is a
        // name with one: no resolver has it as a name, and the failed lookup would read as a network failure, retried
        // and redelivered for an hour, where an internal address is refused at once and a public one connected to.
        var addresses = NetworkAddresses.LiteralOf(host) is { } literal
            ? [literal]
            : await Dns.GetHostAddressesAsync(host, cancellationToken);
        if (addresses.FirstOrDefault(a => !NetworkAddresses.IsPublic(a)) is { } refused)
        {
            throw new WebhookDestinationRefusedException(host, refused);
        }

        return addresses;
    }
}

/// <summary>The webhook URL's host resolved to an address the worker must not call.</summary>
public sealed class WebhookDestinationRefusedException(string host, IPAddress address)
    : Exception($"The webhook URL's host '{host}' resolves to {address}, which is not a public address; deliveries to loopback, private, link-local and other internal networks are refused (Webhooks:AllowPrivateNetworks allows them).");
