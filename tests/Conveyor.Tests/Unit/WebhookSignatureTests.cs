using System.Text;
using Conveyor.Worker.Webhooks;

namespace Conveyor.Tests.Unit;

public sealed class WebhookSignatureTests
{
    private static readonly byte[] Body = Encoding.UTF8.GetBytes("""{"a":1}""");

    [Fact]
    public void A_signature_verifies_with_its_secret_and_body_only()
    {
        var header = WebhookSignature.Create("secret-0123456789", 1_700_000_000, Body);

        Assert.StartsWith("t=1700000000,v1=", header, StringComparison.Ordinal);
        Assert.True(WebhookSignature.Verify("secret-0123456789", header, Body));
        Assert.False(WebhookSignature.Verify("secret-9876543210", header, Body));
        Assert.False(WebhookSignature.Verify("secret-0123456789", header, Encoding.UTF8.GetBytes("""{"a":2}""")));
        Assert.False(WebhookSignature.Verify("secret-0123456789", header.Replace("t=1700000000", "t=1700000001", StringComparison.Ordinal), Body));
        Assert.False(WebhookSignature.Verify("secret-0123456789", "garbage", Body));
    }
}
