using Conveyor.Tests.Faults;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Security;

/// <summary>
/// Webhooks are signed with a secret only the deployment knows. None ships with the worker (its
/// appsettings.json included), so a deployment that forgets to give one fails at start instead of
/// signing every webhook with a value anyone can read in the image.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class WebhookSecretTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task The_worker_as_built_refuses_to_start_without_a_signing_secret()
    {
        await fixture.ResetAsync();
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in WorkerSettings.With())
        {
            settings[key] = value;
        }

        Assert.True(settings.Remove("Webhooks:SigningSecret"));

        // The built worker, run from its own directory: it reads the appsettings.json it ships with.
        var failure = await Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            await using var worker = await ServiceProcess.StartWorkerAsync(settings);
        });
        Assert.Contains("exited", failure.Message, StringComparison.Ordinal);
        Assert.Contains("SigningSecret", failure.Message, StringComparison.Ordinal);
    }
}
