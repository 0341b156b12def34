using System.Net;
using System.Net.Sockets;

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
    /// <summary>The webhook client's handler: public destinations only, unless private networks are allowed.</summary>
    public static SocketsHttpHandler Handler(bool allowPrivateNetworks) => new()
    {
        AllowAutoRedirect = false,
        UseProxy = allowPrivateNetworks,
        ConnectCallback = allowPrivateNetworks ? null : ConnectToPublicAddressAsync,
    };

    /// <summary>Resolves the host, refuses it if any of its addresses is not public, else connects.</summary>
    private static async ValueTask<Stream> ConnectToPublicAddressAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var endpoint = context.DnsEndPoint;
        var addresses = IPAddress.TryParse(endpoint.Host, out var literal)
            ? [literal]
            : await Dns.GetHostAddressesAsync(endpoint.Host, cancellationToken);
        if (addresses.FirstOrDefault(a => !IsPublic(a)) is { } refused)
        {
            throw new WebhookDestinationRefusedException(endpoint.Host, refused);
        }

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
    /// False for loopback, private, shared (carrier-grade NAT), link-local (cloud metadata), unique
    /// local, multicast, documentation, benchmarking, reserved and unspecified addresses, in IPv4,
    /// IPv6 and IPv4 embedded in IPv6 alike.
    /// </summary>
    public static bool IsPublic(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            var b = address.GetAddressBytes();
            return !(b[0] is 0 or 10 or 127 or >= 224
                || (b[0] == 100 && b[1] >= 64 && b[1] <= 127)
                || (b[0] == 169 && b[1] == 254)
                || (b[0] == 172 && b[1] >= 16 && b[1] <= 31)
                || (b[0] == 192 && b[1] == 0 && b[2] is 0 or 2)
                || (b[0] == 192 && b[1] == 168)
                || (b[0] == 198 && b[1] is 18 or 19)
                || (b[0] == 198 && b[1] == 51 && b[2] == 100)
                || (b[0] == 203 && b[1] == 0 && b[2] == 113));
        }

        if (address.AddressFamily != AddressFamily.InterNetworkV6)
        {
            return false;
        }

        var v6 = address.GetAddressBytes();
        // NAT64 (64:ff9b::/96) carries an IPv4 address in its last four bytes: judged by that one.
        if (v6[0] == 0x00 && v6[1] == 0x64 && v6[2] == 0xff && v6[3] == 0x9b && v6.AsSpan(4, 8).IndexOfAnyExcept((byte)0) < 0)
        {
            return IsPublic(new IPAddress(v6.AsSpan(12, 4)));
        }

        return !(IPAddress.IsLoopback(address)
            || address.Equals(IPAddress.IPv6None)
            || v6.AsSpan(0, 12).IndexOfAnyExcept((byte)0) < 0 // :: and the deprecated IPv4-compatible ::a.b.c.d
            || address.IsIPv6LinkLocal
            || address.IsIPv6SiteLocal
            || address.IsIPv6Multicast
            || (v6[0] & 0xfe) == 0xfc // fc00::/7, unique local
            || (v6[0] == 0x20 && v6[1] == 0x01 && v6[2] == 0x0d && v6[3] == 0xb8)); // 2001:db8::/32, documentation
    }
}

/// <summary>The webhook URL's host resolved to an address the worker must not call.</summary>
public sealed class WebhookDestinationRefusedException(string host, IPAddress address)
    : Exception($"The webhook URL's host '{host}' resolves to {address}, which is not a public address; deliveries to loopback, private, link-local and other internal networks are refused (Webhooks:AllowPrivateNetworks allows them).");
