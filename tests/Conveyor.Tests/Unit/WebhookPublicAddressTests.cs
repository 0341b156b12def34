using System.Net;
using Conveyor.Worker.Webhooks;

namespace Conveyor.Tests.Unit;

/// <summary>What a webhook host names when the worker allows public destinations only.</summary>
public sealed class WebhookPublicAddressTests
{
    /// <summary>
    /// A public address written with a final dot is that address, as an internal one written so is refused as its
    /// address: it is connected to, not asked of DNS as a name, which no resolver has (the lookup failed, and the
    /// delivery was retried and redelivered for about an hour before it was dead-lettered).
    /// </summary>
    [Theory]
    [InlineData("93.184.215.14.", "93.184.215.14")]
    [InlineData("8.8.8.8.", "8.8.8.8")]
    [InlineData("8.8.8.8", "8.8.8.8")]
    [InlineData("2606:4700:4700::1111", "2606:4700:4700::1111")]
    public async Task A_public_address_literal_is_that_address_with_or_without_a_final_dot(string host, string expected)
    {
        var addresses = await WebhookDestinations.PublicAddressesAsync(host, CancellationToken.None);

        Assert.Equal([IPAddress.Parse(expected)], addresses);
    }

    [Theory]
    [InlineData("10.0.0.5.", "10.0.0.5")]
    [InlineData("127.0.0.1", "127.0.0.1")]
    [InlineData("localhost.", "127.0.0.1")]
    public async Task An_internal_address_literal_or_a_local_name_is_refused_without_a_lookup(string host, string address)
    {
        var refused = await Assert.ThrowsAsync<WebhookDestinationRefusedException>(
            () => WebhookDestinations.PublicAddressesAsync(host, CancellationToken.None));

        Assert.Contains($"resolves to {address},", refused.Message, StringComparison.Ordinal);
    }
}
