using System.Reflection;
using Conveyor.Api.Backpressure;
using Conveyor.Api.ErrorQueues;
using Conveyor.Api.Hosting;
using Conveyor.Api.Jobs;
using Conveyor.Api.Security;
using Conveyor.ServiceDefaults;
using Conveyor.Worker.Hosting;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Payments;
using Conveyor.Worker.Redelivery;
using Conveyor.Worker.Reports;
using Conveyor.Worker.Retention;
using Conveyor.Worker.Webhooks;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// Every environment variable the manifests give the Api, the worker and the migration Job is a
/// setting that process reads. The configuration binder ignores names it does not know, so a typo
/// (<c>Consumers__ChargePayment__PrefetchCont</c>) or a setting given to the wrong process would
/// leave the default in force without a word.
/// </summary>
public sealed class SettingNamesTests
{
    /// <summary>Sections bound to an options class, per process; each class's settable properties are the known keys.</summary>
    private static readonly Dictionary<string, Type> WorkerSections = new(StringComparer.OrdinalIgnoreCase)
    {
        [RabbitMqOptions.SectionName] = typeof(RabbitMqOptions),
        [PaymentGatewayOptions.SectionName] = typeof(PaymentGatewayOptions),
        [WebhookOptions.SectionName] = typeof(WebhookOptions),
        [ReportOptions.SectionName] = typeof(ReportOptions),
        [ShutdownOptions.SectionName] = typeof(ShutdownOptions),
        [DispatcherOptions.SectionName] = typeof(DispatcherOptions),
        [RetentionOptions.SectionName] = typeof(RetentionOptions),
    };

    private static readonly Dictionary<string, Type> ApiSections = new(StringComparer.OrdinalIgnoreCase)
    {
        [RabbitMqOptions.SectionName] = typeof(RabbitMqOptions),
        [WebhookUrlOptions.SectionName] = typeof(WebhookUrlOptions),
        [BackpressureOptions.SectionName] = typeof(BackpressureOptions),
        [RateLimitingOptions.SectionName] = typeof(RateLimitingOptions),
        [ErrorQueueOptions.SectionName] = typeof(ErrorQueueOptions),
        [DashboardSessionOptions.SectionName] = typeof(DashboardSessionOptions),
        [StrandedJobsOptions.SectionName] = typeof(StrandedJobsOptions),
        [IdleTransactionOptions.SectionName] = typeof(IdleTransactionOptions),
        [AuthThrottlingOptions.SectionName] = typeof(AuthThrottlingOptions),
        [$"{AuthThrottlingOptions.SectionName}:{nameof(AuthThrottlingOptions.SignIn)}"] = typeof(AuthThrottleLimits),
        [$"{AuthThrottlingOptions.SectionName}:{nameof(AuthThrottlingOptions.ApiKeys)}"] = typeof(AuthThrottleLimits),
    };

    /// <summary>Options classes bound to a section the map above gives another class already (the Api's <c>Jobs</c>).</summary>
    private static readonly Dictionary<string, Type[]> MoreApiSections = new(StringComparer.OrdinalIgnoreCase)
    {
        [StrandedJobsOptions.SectionName] = [typeof(JobListingOptions), typeof(JobWaitOptions)],
    };

    /// <summary>Read by the hosts themselves (ASP.NET Core, logging, connection strings, telemetry), by either process.</summary>
    private static readonly string[] HostKeys = ["Urls", "AllowedHosts", "Telemetry:Tracing"];

    private static readonly string[] HostPrefixes = ["Logging:LogLevel:", "ConnectionStrings:", "OTEL_", "DOTNET_", "ASPNETCORE_"];

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_setting_the_manifests_give_is_one_its_process_reads(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        Overlays.AssertNone(rendered, "an environment variable no setting of its process reads (a typo, or the other process's setting)", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                var api = workload.Component == "api";
                if (!api && workload.Component is not ("worker" or "migrations"))
                {
                    continue;
                }

                foreach (var container in workload.Pod.Containers)
                {
                    var environment = rendered.EnvironmentOf(container);
                    // Plain variables that only feed $(NAME) references in others, such as the database host.
                    var referenced = container.Env?.Select(e => e.Value ?? "").ToList() ?? [];
                    foreach (var name in environment.Keys)
                    {
                        if (!Known(name.Replace("__", ":", StringComparison.Ordinal), api)
                            && !referenced.Any(value => value.Contains($"$({name})", StringComparison.Ordinal)))
                        {
                            yield return $"{workload}/{container.Name}: {name}";
                        }
                    }
                }
            }
        }
    }

    [Theory]
    [InlineData("Consumers:ChargePayment:PrefetchCount", false, true)]
    [InlineData("Consumers:ChargePayment:PrefetchCont", false, false)]
    [InlineData("Consumers:ChargePaymentt:PrefetchCount", false, false)]
    [InlineData("RabbitMq:ManagementPort", true, true)]
    // deploy/k8s/README.md and common.env tell how to set it.
    [InlineData("RabbitMq:ManagementUrl", true, true)]
    [InlineData("Redelivery:BatchSize", true, false)]
    [InlineData("Redelivery:BatchSize", false, true)]
    [InlineData("Backpressure:MaxQueueDepth:charge-payment", true, true)]
    [InlineData("Auth:ApiKeys:0:Scopes", true, true)]
    [InlineData("Auth:ApiKeys:0:Scope", true, false)]
    [InlineData("Dashboard:Session:IdleMinutes", true, true)]
    // deploy/k8s/README.md tells how to turn the throttle off.
    [InlineData("Auth:Throttling:Enabled", true, true)]
    [InlineData("Auth:Throttling:ApiKeys:MaxFailures", true, true)]
    [InlineData("Auth:Throttling:SignIn:Lockout", true, true)]
    [InlineData("Auth:Throttling:SignIn:Lockuot", true, false)]
    [InlineData("Auth:Throttling:Enabled", false, false)]
    [InlineData("Logging:LogLevel:Default", false, true)]
    [InlineData("Webhooks:AllowPrivateNetworks", true, true)]
    [InlineData("Webhooks:SigningSecret", true, false)]
    // base/config/common.env and worker-deployment.yaml show how to register a receiver.
    [InlineData("Webhooks:Receivers:0:Origin", false, true)]
    [InlineData("Webhooks:Receivers:0:SigningSecret", false, true)]
    [InlineData("Webhooks:Receivers:3:PreviousSigningSecrets:0", false, true)]
    [InlineData("Webhooks:Receivers:0:Orgin", false, false)]
    // The Api reads the origins and the requirement (base/config/common.env), not the secrets.
    [InlineData("Webhooks:Receivers:0:Origin", true, true)]
    [InlineData("Webhooks:Receivers:0:Orgin", true, false)]
    [InlineData("Webhooks:Receivers:0:SigningSecret", true, false)]
    [InlineData("Webhooks:Receivers:0:PreviousSigningSecrets:0", true, false)]
    [InlineData("Webhooks:RequireRegisteredReceivers", false, true)]
    [InlineData("Webhooks:RequireRegisteredReceivers", true, true)]
    // Three options classes read the Api's Jobs section.
    [InlineData("Jobs:ListingSettleSeconds", true, true)]
    [InlineData("Jobs:MaxConcurrentWaits", true, true)]
    [InlineData("Jobs:MaxConcurentWaits", true, false)]
    [InlineData("Jobs:ListingSettleSecond", true, false)]
    [InlineData("Jobs:ListingSettleSeconds", false, false)]
    // The Api's idle-transaction limit (README's Database row).
    [InlineData("Database:IdleTransactionLimitSeconds", true, true)]
    [InlineData("Database:IdleTransactionLimitSeconds", false, false)]
    public void The_check_knows_settings_from_typos(string key, bool api, bool known) =>
        Assert.Equal(known, Known(key, api));

    private static bool Known(string key, bool api)
    {
        if (HostKeys.Contains(key, StringComparer.OrdinalIgnoreCase)
            || HostPrefixes.Any(prefix => key.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)))
        {
            return true;
        }

        var parts = key.Split(':');
        if (api)
        {
            // Auth:ApiKeys:<n>:Name|Key|Scopes[:<n>] (ApiKeyOptions.From); Backpressure:MaxQueueDepth:<kind>.
            if (parts is [var auth, var keys, _, var field, ..] && Is(auth, ApiKeyOptions.SectionName) && Is(keys, "ApiKeys"))
            {
                return parts.Length == 4 ? field is "Name" or "Key" or "Scopes" : parts.Length == 5 && Is(field, "Scopes");
            }

            if (parts is [var backpressure, var depth, _] && Is(backpressure, BackpressureOptions.SectionName) && Is(depth, nameof(BackpressureOptions.MaxQueueDepth)))
            {
                return true;
            }

            // Webhooks:Receivers:<n>:Origin.
            if (parts is [var webhooks, var receivers, var index, ..] && Is(webhooks, WebhookUrlOptions.SectionName) && Is(receivers, nameof(WebhookUrlOptions.Receivers)))
            {
                return parts.Length == 4 && int.TryParse(index, out _) && HasProperty(typeof(WebhookReceiverUrlOptions), parts[3]);
            }
        }
        else if (parts is [var consumers, var consumer, var property] && Is(consumers, ConsumerEndpointOptions.SectionName))
        {
            return WorkerEndpoints.All.Any(e => Is(e.ConsumerName, consumer)) && HasProperty(typeof(ConsumerEndpointOptions), property);
        }
        else if (parts is [var webhooks, var receivers, var index, var field, ..] && Is(webhooks, WebhookOptions.SectionName)
            && Is(receivers, nameof(WebhookOptions.Receivers)))
        {
            // Webhooks:Receivers:<n>:Origin|SigningSecret|PreviousSigningSecrets[:<n>].
            return int.TryParse(index, out _) && (parts.Length == 4
                ? HasProperty(typeof(WebhookReceiverOptions), field)
                : parts.Length == 5 && Is(field, nameof(WebhookReceiverOptions.PreviousSigningSecrets)) && int.TryParse(parts[4], out _));
        }

        // The longest section that matches (Dashboard:Session before a plain Dashboard), then one property.
        var sections = api ? ApiSections : WorkerSections;
        for (var length = parts.Length - 1; length >= 1; length--)
        {
            if (sections.TryGetValue(string.Join(':', parts[..length]), out var options))
            {
                return length == parts.Length - 1
                    && (HasProperty(options, parts[^1])
                        || (api && MoreApiSections.TryGetValue(string.Join(':', parts[..length]), out var more) && more.Any(type => HasProperty(type, parts[^1]))));
            }
        }

        return false;
    }

    private static bool Is(string a, string b) => string.Equals(a, b, StringComparison.OrdinalIgnoreCase);

    private static bool HasProperty(Type options, string name) =>
        options.GetProperty(name, BindingFlags.Public | BindingFlags.Instance | BindingFlags.IgnoreCase) is { CanWrite: true };
}
